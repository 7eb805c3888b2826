//! The gateway's own pages and JSON answers. Words are constant and generic: nothing here echoes
//! a path, query or header, so no page outside the login wall can carry health detail.

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The stylesheet of every gateway page, served as `/.aalgate/static/aalgate.css` (the CSP
/// allows no inline style or script).
pub const STYLE: &str = include_str!("../assets/aalgate.css");
/// The ceremony script, served as `/.aalgate/static/aalgate.js`.
pub const SCRIPT: &str = include_str!("../assets/aalgate.js");

/// The Content-Security-Policy of gateway pages: own files only, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A complete page. `body_html` must already be escaped.
pub fn page(title: &str, body_html: &str, request_id: &str) -> String {
    page_with(title, body_html, request_id, "")
}

/// A page with attributes on `<main>` (already escaped) and the ceremony script.
pub fn page_with(title: &str, body_html: &str, request_id: &str, main_attrs: &str) -> String {
    let script = if main_attrs.is_empty() {
        ""
    } else {
        "<script src=\"/.aalgate/static/aalgate.js\" defer></script>"
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\"><title>{t}</title><link rel=\"stylesheet\" href=\"/.aalgate/static/aalgate.css\">{script}</head>\
<body><main{main_attrs}><h1>{t}</h1>{body_html}\
<p class=\"code\">Reference: {rid}</p></main></body></html>",
        t = escape(title),
        rid = escape(request_id),
    )
}

/// Title and explanation for an error status the gateway answers itself.
pub fn error_text(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("Bad request", "The address of this request is malformed or ambiguous, so it was refused. Check the link, or start again from the application's home page."),
        403 => ("Access denied", "The access policy does not allow this page. If you need it for your work, contact IT."),
        404 => ("Not found", "There is no gateway page at this address."),
        405 => ("Method not allowed", "This gateway page does not accept this kind of request."),
        408 => ("Request timed out", "The request was not sent completely in time. Try again; if you were submitting a form, check whether it arrived before sending it again."),
        414 => ("Address too long", "The address of this request is too long, so it was refused."),
        429 => ("Too many sign-in attempts", "Too many sign-ins were started from this network in the last minute. Wait a minute, then open the page again. If you share a network with many colleagues and this keeps happening, contact IT."),
        431 => ("Request too large", "The request carries too much header data (often too many or too large cookies). Clear this site's cookies and try again."),
        421 => ("Unknown site", "This gateway does not serve the site you asked for. Check the address."),
        502 => ("Application unavailable", "The application behind this gateway did not answer properly. Your session is kept; try again in a moment, and contact IT if it persists."),
        504 => ("Application not responding", "The application behind this gateway did not answer in time. If you submitted a form, check in the application whether it went through before sending it again."),
        503 => ("Sign-in temporarily unavailable", "The sign-in service cannot check your session right now, so protected pages are closed. Your session is kept; this page will work again shortly. Try again in a few seconds."),
        _ => ("Error", "The gateway could not complete this request."),
    }
}

/// The JSON body for an error the gateway answers itself.
pub fn error_json(status: u16, code: &str, request_id: &str) -> String {
    let (title, detail) = error_text(status);
    serde_json::json!({ "error": code, "title": title, "detail": detail, "request_id": request_id })
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let p = page("T<", "<p>x</p>", "r\"1");
        assert!(p.contains("<h1>T&lt;</h1>") && p.contains("r&quot;1"));
    }
}
