//! Page tokens (`nextPageToken`): which page of a listing to return, and at which registry
//! revision the listing was read.
//!
//! fleet's token is URL-safe base64 (with `=` padding) of 4 little-endian bytes
//! `{u16 limit, u16 page}`: `ZAACAA==` is limit 100, page 2. Ours appends the registry revision
//! the first page was read at (`i64`, 12 bytes in all) so every page of one listing shows the
//! same moment; fleet's 4-byte tokens are still accepted and read the latest revision.
//!
//! ```
//! use server::token::PageToken;
//! let t = PageToken::decode("ZAACAA==", 100).unwrap();
//! assert_eq!((t.limit, t.page, t.revision), (100, 2, None));
//! assert_eq!(PageToken::decode("EwBMLg==", 100).unwrap_err().to_string(), "token limit must be 100");
//! ```

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use registry::Revision;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageToken {
    pub limit: u16,
    /// 1-based.
    pub page: u16,
    /// The revision the listing is pinned to; `None` for fleet's tokens and first pages.
    pub revision: Option<Revision>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("too many values for page token")]
    TooMany,
    #[error("invalid page token {token:?}: {reason}")]
    Invalid { token: String, reason: String },
    #[error("token limit must be {0}")]
    Limit(u16),
    #[error("token page must be greater than zero")]
    PageZero,
    #[error(
        "page token out of range: page {page} of a listing of {items} items in pages of {limit} \
         ({pages} pages); start again without nextPageToken"
    )]
    PastEnd {
        page: u16,
        limit: u16,
        items: usize,
        pages: usize,
    },
}

impl PageToken {
    /// The first page of a listing of pages of `limit` items.
    pub fn first(limit: u16) -> PageToken {
        PageToken {
            limit,
            page: 1,
            revision: None,
        }
    }

    /// The token of `page`'s successor, pinned to `revision`.
    pub fn next(&self, revision: Revision) -> PageToken {
        PageToken {
            limit: self.limit,
            page: self.page.saturating_add(1),
            revision: Some(revision),
        }
    }

    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(12);
        raw.extend_from_slice(&self.limit.to_le_bytes());
        raw.extend_from_slice(&self.page.to_le_bytes());
        if let Some(rev) = self.revision {
            raw.extend_from_slice(&rev.to_le_bytes());
        }
        URL_SAFE.encode(raw)
    }

    /// Reads a token the server handed out (or fleet's); its limit must be the server's.
    pub fn decode(token: &str, token_limit: u16) -> Result<PageToken, TokenError> {
        let invalid = |reason: String| TokenError::Invalid {
            token: token.to_string(),
            reason,
        };
        let raw = URL_SAFE.decode(token).map_err(|e| invalid(e.to_string()))?;
        let (limit, page, revision) = match raw.as_slice() {
            [l0, l1, p0, p1] => (
                u16::from_le_bytes([*l0, *l1]),
                u16::from_le_bytes([*p0, *p1]),
                None,
            ),
            [l0, l1, p0, p1, rest @ ..] if rest.len() == 8 => {
                let mut rev = [0u8; 8];
                rev.copy_from_slice(rest);
                (
                    u16::from_le_bytes([*l0, *l1]),
                    u16::from_le_bytes([*p0, *p1]),
                    Some(i64::from_le_bytes(rev)),
                )
            }
            other => return Err(invalid(format!("{} bytes, want 4 or 12", other.len()))),
        };
        if limit != token_limit {
            return Err(TokenError::Limit(token_limit));
        }
        if page == 0 {
            return Err(TokenError::PageZero);
        }
        if matches!(revision, Some(r) if r <= 0) {
            return Err(invalid("revision must be positive".into()));
        }
        Ok(PageToken {
            limit,
            page,
            revision,
        })
    }

    /// The token of a request's query string (`nextPageToken`, at most once), or the first page.
    pub fn from_query(query: Option<&str>, token_limit: u16) -> Result<PageToken, TokenError> {
        let values: Vec<String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .filter(|(k, _)| k == "nextPageToken")
            .map(|(_, v)| v.into_owned())
            .collect();
        match values.as_slice() {
            [] => Ok(PageToken::first(token_limit)),
            [one] => PageToken::decode(one, token_limit),
            _ => Err(TokenError::TooMany),
        }
    }
}

/// Refuses a token for a page after the last of a listing of `items` items. The server hands
/// out a token only when more items follow, so such a token was made up or belongs to another
/// listing; fleet answered it with an empty page, which a client paging until no token is left
/// cannot tell from the end of the listing. The first page is always in range (it may be empty),
/// and so is the page right after the last for fleet's own 4-byte tokens: fleet handed those out
/// when the items filled the last page exactly, and its clients then asked for that empty page.
pub fn check_in_range(token: &PageToken, items: usize) -> Result<(), TokenError> {
    let limit = usize::from(token.limit.max(1));
    let start = usize::from(token.page.max(1) - 1).saturating_mul(limit);
    let fleets_extra_page = token.revision.is_none() && start == items;
    if token.page > 1 && start >= items && !fleets_extra_page {
        return Err(TokenError::PastEnd {
            page: token.page,
            limit: token.limit,
            items,
            pages: items.div_ceil(limit),
        });
    }
    Ok(())
}

/// The positions of `token`'s page in a listing of `total` items read at `revision`, and the
/// token of the next page when more items follow. Unlike fleet, no token is handed out for an
/// empty last page.
pub fn page_range(
    token: &PageToken,
    total: usize,
    revision: Revision,
) -> (std::ops::Range<usize>, Option<PageToken>) {
    let limit = usize::from(token.limit.max(1));
    let start = usize::from(token.page.max(1) - 1).saturating_mul(limit);
    let end = start.saturating_add(limit);
    let next = (end < total && token.page < u16::MAX).then(|| token.next(revision));
    (start.min(total)..end.min(total), next)
}

/// One page of `items` (already read at `revision`) for `token`, and the token of the next
/// page when more items follow.
pub fn paginate<T>(
    items: Vec<T>,
    token: &PageToken,
    revision: Revision,
) -> (Vec<T>, Option<PageToken>) {
    let (range, next) = page_range(token, items.len(), revision);
    let page = items
        .into_iter()
        .skip(range.start)
        .take(range.len())
        .collect();
    (page, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_vectors() {
        assert_eq!(
            PageToken {
                limit: 100,
                page: 2,
                revision: None
            }
            .encode(),
            "ZAACAA=="
        );
        assert_eq!(
            PageToken::decode("ZAACAA==", 100),
            Ok(PageToken {
                limit: 100,
                page: 2,
                revision: None
            })
        );
        // fleet's functional test: limit 19 against a server limit of 100.
        assert_eq!(
            PageToken::decode("EwBMLg==", 100),
            Err(TokenError::Limit(100))
        );
        assert_eq!(
            PageToken::decode("EwBMLg==", 19).map(|t| t.page),
            Ok(0x2e4c)
        );
        let page0 = PageToken {
            limit: 100,
            page: 0,
            revision: None,
        }
        .encode();
        assert_eq!(PageToken::decode(&page0, 100), Err(TokenError::PageZero));
    }

    #[test]
    fn pinned_tokens_round_trip() {
        let t = PageToken {
            limit: 7,
            page: 3,
            revision: Some(123_456_789_012),
        };
        assert_eq!(t.encode().len(), 16);
        assert_eq!(PageToken::decode(&t.encode(), 7), Ok(t));
    }

    #[test]
    fn garbage_is_rejected_with_the_token_named() {
        for bad in ["", "!!!!", "ZAAC", "ZAACAAAA", "ZAACAA"] {
            let err = PageToken::decode(bad, 100).unwrap_err();
            assert!(matches!(err, TokenError::Invalid { .. }), "{bad}: {err}");
        }
        let neg = PageToken {
            limit: 100,
            page: 2,
            revision: Some(-1),
        }
        .encode();
        assert!(matches!(
            PageToken::decode(&neg, 100),
            Err(TokenError::Invalid { .. })
        ));
    }

    #[test]
    fn query_parsing() {
        assert_eq!(PageToken::from_query(None, 100), Ok(PageToken::first(100)));
        assert_eq!(
            PageToken::from_query(Some("machineID=x"), 100),
            Ok(PageToken::first(100))
        );
        assert_eq!(
            PageToken::from_query(Some("nextPageToken=ZAACAA%3D%3D"), 100).map(|t| t.page),
            Ok(2)
        );
        assert_eq!(
            PageToken::from_query(Some("nextPageToken=ZAACAA==&nextPageToken=ZAACAA=="), 100),
            Err(TokenError::TooMany)
        );
    }

    #[test]
    fn pages_cover_every_item_once_and_end_without_an_empty_page() {
        for total in 0..12usize {
            for limit in 1..5u16 {
                let items: Vec<usize> = (0..total).collect();
                let mut seen = Vec::new();
                let mut token = PageToken::first(limit);
                let mut pages = 0;
                loop {
                    let (page, next) = paginate(items.clone(), &token, 9);
                    pages += 1;
                    assert!(
                        !page.is_empty() || total == 0,
                        "empty page {pages} for total {total} limit {limit}"
                    );
                    seen.extend(page);
                    match next {
                        Some(n) => {
                            assert_eq!(n.revision, Some(9));
                            token = n;
                        }
                        None => break,
                    }
                }
                assert_eq!(seen, items);
                assert_eq!(pages, total.div_ceil(usize::from(limit)).max(1));
            }
        }
    }

    #[test]
    fn pages_past_the_end_are_out_of_range() {
        let t = |page| PageToken {
            limit: 2,
            page,
            revision: Some(7),
        };
        assert_eq!(check_in_range(&t(1), 0), Ok(()));
        assert_eq!(check_in_range(&t(2), 3), Ok(()));
        let err = check_in_range(&t(3), 4).unwrap_err();
        assert_eq!(
            err,
            TokenError::PastEnd {
                page: 3,
                limit: 2,
                items: 4,
                pages: 2
            }
        );
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(check_in_range(&t(u16::MAX), 5).is_err());
        // fleet's extra empty page after an exactly full last page, with fleet's tokens only.
        assert!(check_in_range(&t(3), 4).is_err());
        let fleet = |page| PageToken {
            revision: None,
            ..t(page)
        };
        assert_eq!(check_in_range(&fleet(3), 4), Ok(()));
        assert!(check_in_range(&fleet(4), 4).is_err());
    }

    #[test]
    fn a_page_past_the_end_is_empty() {
        let (page, next) = paginate(
            vec![1, 2, 3],
            &PageToken {
                limit: 2,
                page: 5,
                revision: None,
            },
            1,
        );
        assert!(page.is_empty());
        assert_eq!(next, None);
    }
}
