//! `GET /.aalgate/jwks.json`.

use pingora::prelude::*;

use crate::http::Exchange;
use crate::state::{Reply, State};

/// `GET /.aalgate/jwks.json`: the key the upstream checks assertions with.
pub(super) async fn jwks(g: &State, x: &mut Exchange<'_>) -> Result<bool> {
    let reply = Reply::json(200, g.signer.jwks().to_string());
    x.send(reply).await
}
