//! `GET /.aalgate/switch`: another person signs in on a shared workstation.

use aalgate_policy::Aal;
use aalgate_session::{Flow, FlowId, FlowKind};
use pingora::prelude::*;

use crate::http::Exchange;
use crate::outcome::Outcome;
use crate::pages::{self};
use crate::state::bind_cookie;
use crate::state::{Reply, State};

/// `GET /.aalgate/switch` (any host): sign in as someone else on a shared workstation. The
/// sign-in page is shown even when a session exists; when a different person signs in,
/// the previous person's session ends on every host.
pub(crate) async fn switch_user(st: &State, x: &mut Exchange<'_>) -> Result<bool> {
    if let Err(retry) = st.take_flow_token(x.session) {
        return st.too_many_flows(x, retry).await;
    }
    let app = st.app_of_host(x.ctx);
    let (bind, set_bind) = x.binding();
    let flow = Flow {
        host: st.canonical_host(&x.ctx.host),
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
        created: st.clock.now(),
        user: None,
    };
    let size = serde_json::to_vec(&flow).map_or(crate::state::MAX_FLOW_BYTES, |v| v.len());
    match st.charge_anonymous(size, st.client_ip(x.session)).await {
        Ok(Ok(())) => {}
        Ok(Err(full)) => return st.anonymous_quota_full(x, full).await,
        Err(e) => {
            tracing::warn!(request_id = %x.ctx.request_id, error = %e, "switch user: store error");
            return x.error(Outcome::StoreUnavailable).await;
        }
    }
    let id = FlowId::generate();
    if let Err(e) = st
        .store
        .put_flow(&id.key(), &flow, crate::state::FLOW_TTL)
        .await
    {
        tracing::warn!(request_id = %x.ctx.request_id, error = %e, "switch user: store error");
        return x.error(Outcome::StoreUnavailable).await;
    }
    x.ctx.outcome = Outcome::Switch;
    let to = format!(
        "{}://{}/.aalgate/auth?flow={}",
        st.service().scheme,
        st.public_host_str(),
        id.encode()
    );
    let mut reply = Reply::html(
        302,
        pages::page(
            "Switch user",
            "<p>Taking you to sign in.</p>",
            &x.ctx.request_id,
        ),
    )
    .header("location", to);
    if set_bind {
        reply = reply.header("set-cookie", bind_cookie(&bind, x.ctx.tls));
    }
    x.send(reply).await
}
