//! `GET /.aalgate/static/*`: the pages' script and style sheet.

use pingora::prelude::*;

use crate::http::Exchange;
use crate::outcome::Outcome;
use crate::pages::{self};
use crate::state::{Reply, State};

/// Static files of the pages.
pub(crate) async fn static_file(_st: &State, x: &mut Exchange<'_>, path: &str) -> Result<bool> {
    let (ctype, body) = match path {
        "/.aalgate/static/aalgate.js" => ("text/javascript; charset=utf-8", pages::SCRIPT),
        "/.aalgate/static/aalgate.css" => ("text/css; charset=utf-8", pages::STYLE),
        _ => return x.error(Outcome::NotFound).await,
    };
    let mut r = Reply::html(200, body.to_string());
    r.content_type = ctype;
    x.send(r).await
}
