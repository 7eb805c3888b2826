//! `GET /.aalgate/jwks.json`.

use pingora::prelude::*;

use crate::state::{Ctx, Gateway, Reply};

/// `GET /.aalgate/jwks.json`: the key the upstream checks assertions with.
pub(super) async fn jwks(g: &Gateway, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let reply = Reply::json(200, g.signer.jwks().to_string());
    g.send(session, ctx, reply).await
}
