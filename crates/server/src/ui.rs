//! The dashboard at `/ui`: one HTML page, one script and one style sheet, embedded in the
//! binary (no network at run time). The script reads the API v1 JSON (units, states, machines,
//! why) and follows `/fleet/v1/events` (server-sent events) to update what is on screen
//! without reloading; see the README's "Observe: the dashboard" for why plain JS.
//!
//! Access is the API's (`server::access`): a unix-socket client may do everything; over TCP
//! with tokens, a browser cannot set `Authorization` on its requests (an `EventSource` least of
//! all), so `/ui?token=TOKEN` answers with the token in a `fleet_token` cookie (HttpOnly,
//! SameSite=Strict, so other sites' pages cannot send it) and a redirect to `/ui`, and the
//! server takes that cookie as the bearer token when a request carries no `Authorization`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// The cookie that carries a token for the browser.
pub const TOKEN_COOKIE: &str = "fleet_token";

/// `GET /ui/<asset>` (`asset` empty for the page itself).
pub(crate) fn get(asset: &str, query: Option<&str>) -> Response {
    if asset.is_empty() || asset == "index.html" {
        if let Some(token) = query_token(query) {
            return with_cookie(&token);
        }
    }
    let (body, content_type) = match asset {
        "" | "index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                format!("no dashboard file {asset:?}: the dashboard is at /ui"),
            )
                .into_response()
        }
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Everything the page loads comes from this server: no CDN, no inline script.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; object-src 'none'; frame-ancestors 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The redirect to `/ui` that sets the token cookie, so that the token leaves the address bar.
fn with_cookie(token: &str) -> Response {
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            let mut resp = StatusCode::SEE_OTHER.into_response();
            resp.headers_mut().insert(header::SET_COOKIE, v);
            resp.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/ui"));
            resp
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            "the token holds characters a cookie cannot carry; copy it again from `fleetctl token new`",
        )
            .into_response(),
    }
}

/// The bearer credentials of a request: its `Authorization` header, else the token cookie as
/// `Bearer TOKEN`, else, for the dashboard's page, its `?token=`.
pub(crate) fn credentials(headers: &HeaderMap, ui_query: Option<&str>) -> Option<Vec<u8>> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        return Some(h.as_bytes().to_vec());
    }
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
        .map(str::to_string);
    from_cookie
        .or_else(|| query_token(ui_query))
        .map(|t| format!("Bearer {t}").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_served_and_others_are_not() {
        for (asset, kind) in [
            ("", "text/html"),
            ("app.js", "text/javascript"),
            ("app.css", "text/css"),
        ] {
            let r = get(asset, None);
            assert_eq!(r.status(), StatusCode::OK, "{asset}");
            let ct = r.headers()[header::CONTENT_TYPE].to_str().unwrap();
            assert!(ct.starts_with(kind), "{asset}: {ct}");
        }
        assert_eq!(get("nope.js", None).status(), StatusCode::NOT_FOUND);
        // The page loads only what is embedded.
        assert!(INDEX_HTML.contains("src=\"/ui/app.js\""));
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
    }

    #[test]
    fn a_token_becomes_a_cookie_and_the_cookie_a_bearer() {
        let r = get("", Some("token=abc"));
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(cookie.starts_with("fleet_token=abc;") && cookie.contains("HttpOnly"));
        let mut h = HeaderMap::new();
        assert_eq!(credentials(&h, None), None);
        assert_eq!(credentials(&h, Some("token=q")), Some(b"Bearer q".to_vec()));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; fleet_token=abc"),
        );
        assert_eq!(credentials(&h, None), Some(b"Bearer abc".to_vec()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(credentials(&h, None), Some(b"Bearer x".to_vec()));
    }
}
