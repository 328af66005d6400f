//! The API's request decoding, as fleetd's server does it before any registry call: the URL
//! path (percent-decoding, routing, 404 messages), the page token of the query, and the JSON
//! bodies of `PUT /units/<name>` and `PATCH /machines` with their validation. The input is
//! `METHOD PATH[?QUERY]` on the first line and the body after it. Every refusal must be a 4xx.

#![no_main]

use libfuzzer_sys::fuzz_target;
use server::routes::{decode_path, not_found_message, route, Route};
use server::token::{check_in_range, paginate, PageToken};

fn client_error(e: &server::ApiError) {
    assert!(
        e.status.is_client_error(),
        "a refusal of input must be a 4xx: {} {}",
        e.status,
        e.message
    );
}

fn decode_put(name: &str, body: &[u8]) {
    match server::decode_put(name, body) {
        Ok(put) => {
            let _ = server::validate_options(&put.unit.name, &put.file);
        }
        Err(e) => client_error(&e),
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (head, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let head = String::from_utf8_lossy(head);
    let (method, target) = head.split_once(' ').unwrap_or(("GET", &head));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    if let Some(path) = decode_path(path) {
        let r = route(method, &path);
        let _ = r.label();
        match r {
            Route::UnitPut(name) => decode_put(&name, body),
            Route::MachinesPatch => {
                if let Err(e) = server::decode_patch(body) {
                    client_error(&e);
                }
            }
            Route::NotFound => {
                let _ = not_found_message(&path);
            }
            _ => {}
        }
    }
    if let Ok(token) = PageToken::from_query(Some(query), 100) {
        assert_eq!(PageToken::decode(&token.encode(), 100), Ok(token));
        let items: Vec<usize> = (0..body.len().min(1000)).collect();
        if check_in_range(&token, items.len()).is_ok() {
            let _ = paginate(items, &token, 1);
        }
    }
    // The body as either kind, whatever the head said.
    decode_put("fuzz.service", body);
    if let Err(e) = server::decode_patch(body) {
        client_error(&e);
    }
});
