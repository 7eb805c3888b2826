//! The bundled demo upstream: a small "legacy billing" app with no login of its own, as the
//! apps aalgate protects usually are. Pages, a form that POSTs, a JSON endpoint, a static
//! asset, an admin area and a debug console the demo policy denies. `/echo/...` answers with
//! what the app received (method, path, headers), so IT can see exactly what aalgate forwards.

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::pages::escape;

/// The demo app.
pub struct DemoBilling;

/// Invoices saved since the demo app started (shows that a kept form arrives exactly once).
static INVOICES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

const CSS: &str = "body{font:15px/1.5 Georgia,serif;margin:2rem auto;max-width:46rem;color:#222}\
header{border-bottom:3px double #246;margin-bottom:1rem}nav a{margin-right:1rem}table{border-collapse:collapse}\
td,th{border:1px solid #999;padding:.2rem .6rem}.who{float:right;color:#555;font-size:.9rem}";

/// Who is looking at a page, and the logout token the gateway gave for their sign-out form.
struct Me {
    who: String,
    logout: String,
}

fn page(title: &str, me: &Me, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} - Legacy Billing</title>\
<link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><header><span class=\"who\">signed in as {w}</span>\
<h1>Legacy Billing</h1><nav><a href=\"/\">Home</a><a href=\"/invoices\">Invoices</a><a href=\"/invoices/new\">New invoice</a>\
<a href=\"/payouts/bank-account\">Payout account</a><a href=\"/admin/\">Admin</a><a href=\"/api/invoices.json\">JSON</a></nav></header>\
<h2>{t}</h2>{body}<hr><form method=\"post\" action=\"/.aalgate/logout\">\
<input type=\"hidden\" name=\"csrf\" value=\"{l}\"><button>Sign out</button></form></body></html>",
        t = escape(title),
        w = escape(&me.who),
        l = escape(&me.logout),
    )
}

fn respond(status: u16, ctype: &str, body: String) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("content-length", body.len())
        .body(body.into_bytes())
        .unwrap_or_default()
}

fn html(status: u16, body: String) -> http::Response<Vec<u8>> {
    respond(status, "text/html; charset=utf-8", body)
}

async fn read_body(session: &mut ServerSession, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        if body.len() + chunk.len() > limit {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    body
}

#[async_trait]
impl ServeHttp for DemoBilling {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let who = req
            .headers
            .get("x-aalgate-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(nobody)")
            .to_string();
        let aal = req
            .headers
            .get("x-aalgate-aal")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        // An app's access log: what it received and as whom, by the gateway's request id.
        let request_id = req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info!(%method, %path, request_id = %request_id, user = %who, "request");
        // The gateway's logout token: one click on "Sign out" ends the session.
        let me = Me {
            who: who.clone(),
            logout: req
                .headers
                .get("x-aalgate-logout-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/static/style.css") => respond(200, "text/css", CSS.into()),
            ("GET", "/healthz") => respond(200, "text/plain", "ok\n".into()),
            ("GET", "/") => html(200, page("Home", &me, &format!("<p>Welcome. Your session is at AAL{}.</p>", escape(&aal)))),
            ("GET", "/invoices") => html(
                200,
                page("Invoices", &me, &(format!("<p>{} invoice(s) saved since the app started.</p><table>", INVOICES.load(std::sync::atomic::Ordering::SeqCst))
                    + "<tr><th>No.</th><th>Account</th><th>Amount</th></tr><tr><td>1001</td><td>ACME-7</td><td>$120.00</td></tr><tr><td>1002</td><td>ACME-9</td><td>$75.50</td></tr></table>")),
            ),
            ("GET", "/invoices/new") => html(
                200,
                page("New invoice", &me, "<form method=\"post\" action=\"/invoices\"><p><label>Account <input name=\"account\"></label></p>\
<p><label>Amount <input name=\"amount\"></label></p><p><label>Note <textarea name=\"note\"></textarea></label></p><button>Save invoice</button></form>"),
            ),
            ("POST", "/invoices") => {
                let body = read_body(session, 1 << 20).await;
                let n = INVOICES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                html(201, page("Invoice saved", &me, &format!("<p>Saved invoice #{n} ({} bytes of form data).</p>", body.len())))
            }
            ("GET", "/api/invoices.json") => respond(200, "application/json", r#"[{"no":1001,"account":"ACME-7","amount":"120.00"},{"no":1002,"account":"ACME-9","amount":"75.50"}]"#.into()),
            ("GET", "/payouts/bank-account") => html(
                200,
                page("Payout account", &me, "<form method=\"post\" action=\"/payouts/bank-account\"><p><label>IBAN <input name=\"iban\"></label></p><button>Change payout account</button></form>"),
            ),
            ("POST", "/payouts/bank-account") => {
                let _ = read_body(session, 1 << 16).await;
                html(200, page("Payout account changed", &me, "<p>The payout account was changed.</p>"))
            }
            ("GET", p) if p == "/admin" || p.starts_with("/admin/") => html(200, page("Admin", &me, "<p>User administration of the legacy app.</p>")),
            ("GET", p) if p.starts_with("/debug") => html(200, page("Debug console", &me, "<p>Internal debug console: must never be reachable.</p>")),
            (_, p) if p.starts_with("/echo") => {
                let headers: serde_json::Map<String, serde_json::Value> = session
                    .req_header()
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned())))
                    .collect();
                let raw = String::from_utf8_lossy(session.req_header().raw_path()).into_owned();
                let body = read_body(session, 1 << 20).await;
                let j = serde_json::json!({ "method": method, "path": raw, "headers": headers, "body_len": body.len() });
                respond(200, "application/json", j.to_string())
            }
            _ => html(404, page("Not found", &me, "<p>No such page in the legacy app.</p>")),
        }
    }
}
