//! `GET /.aalgate/switch`: another person signs in on a shared workstation.

use aalgate_policy::Aal;
use aalgate_session::{Flow, FlowId, FlowKind};
use pingora::prelude::*;

use crate::outcome::Outcome;
use crate::pages::{self};
use crate::state::bind_cookie;
use crate::state::{Ctx, Gateway, Reply};

impl Gateway {
    /// `GET /.aalgate/switch` (any host): sign in as someone else on a shared workstation. The
    /// sign-in page is shown even when a session exists; when a different person signs in,
    /// the previous person's session ends on every host.
    pub(crate) async fn switch_user(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Err(retry) = self.take_flow_token(session) {
            return self.too_many_flows(session, ctx, retry).await;
        }
        let app = self.app_of_host(ctx);
        let (bind, set_bind) = self.binding(session, ctx);
        let flow = Flow {
            host: self.canonical_host(&ctx.host),
            browser: Some(bind.hash()),
            kept: None,
            binding: None,
            script: false,
            method: "GET".into(),
            url: "/".into(),
            need: FlowKind::Switch,
            aal: Aal::Aal2,
            max_age_secs: None,
            app: app.unwrap_or_else(|| "the applications".into()),
            created: self.clock.now(),
            user: None,
        };
        let size = serde_json::to_vec(&flow).map_or(crate::state::MAX_FLOW_BYTES, |v| v.len());
        match self.charge_anonymous(size, self.client_ip(session)).await {
            Ok(Ok(())) => {}
            Ok(Err(full)) => return self.anonymous_quota_full(session, ctx, full).await,
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "switch user: store error");
                return self.error(session, ctx, Outcome::StoreUnavailable).await;
            }
        }
        let id = FlowId::generate();
        if let Err(e) = self
            .store
            .put_flow(&id.key(), &flow, crate::state::FLOW_TTL)
            .await
        {
            tracing::warn!(request_id = %ctx.request_id, error = %e, "switch user: store error");
            return self.error(session, ctx, Outcome::StoreUnavailable).await;
        }
        ctx.outcome = Outcome::Switch;
        let to = format!(
            "{}://{}/.aalgate/auth?flow={}",
            self.service().scheme,
            self.public_host_str(),
            id.encode()
        );
        let mut reply = Reply::html(
            302,
            pages::page(
                "Switch user",
                "<p>Taking you to sign in.</p>",
                &ctx.request_id,
            ),
        )
        .header("location", to);
        if set_bind {
            reply = reply.header("set-cookie", bind_cookie(&bind, ctx.tls));
        }
        self.send(session, ctx, reply).await
    }
}
