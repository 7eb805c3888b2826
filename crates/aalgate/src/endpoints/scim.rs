//! `/.aalgate/scim/v2/`: provisioning from the hospital's directory (SCIM 2.0, RFC 7643/7644),
//! on the auth origin, behind the provisioning token ([`crate::provisioning`]).
//!
//! A SCIM User is an aalgate account (`userName` is the user id, the resource id its random
//! WebAuthn handle); a SCIM Group is a group name policies use (the resource id is the name),
//! its members the people whose groups name it. Changes take the CLI's paths, so they reach
//! every instance within the session cache's second: `active: false` disables the person and
//! ends every session, `DELETE` removes them ([`aalgate_auth::Directory::remove_user`]), and a
//! membership change is `users groups`. Every change is audited with the CLI's event names and
//! `operator: scim:<client>`, without the values a directory sent (names, addresses).

use std::collections::{BTreeMap, BTreeSet};

use aalgate_auth::{Directory, DirectoryError, User};
use aalgate_scim::{
    discovery, group_json, list_json, user_json, GroupAttrs, GroupIn, ListQuery, ScimError,
    ScimType, UserAttrs, UserIn, UserView,
};
use pingora::prelude::*;
use serde_json::Value;

use crate::http::Exchange;
use crate::outcome::Outcome;
use crate::report::rfc3339;
use crate::state::{Ctx, Reply, State};

/// Where the service lives.
pub(crate) const PREFIX: &str = "/.aalgate/scim/v2";
/// What the directory sent of each person ([`UserAttrs`]), by user id.
pub(crate) const SCIM_USER_NS: &str = "scim_user";
/// Groups the directory created ([`GroupAttrs`]), by name.
pub(crate) const SCIM_GROUP_NS: &str = "scim_group";
/// Largest body read (a group of some thousands of members), only once the token checked.
const MAX_SCIM_BODY: usize = 2 * 1024 * 1024;
const CONTENT_TYPE: &str = "application/scim+json";

/// Why a request failed: a SCIM refusal, or the store (503).
enum Fail {
    Scim(ScimError),
    Store(String),
}

impl From<ScimError> for Fail {
    fn from(e: ScimError) -> Fail {
        Fail::Scim(e)
    }
}

impl From<DirectoryError> for Fail {
    fn from(e: DirectoryError) -> Fail {
        match e {
            DirectoryError::NoUser(u) => Fail::Scim(ScimError::not_found(format!("no user {u}"))),
            DirectoryError::Invalid(m) => Fail::Scim(ScimError::bad(ScimType::InvalidValue, m)),
            DirectoryError::Taken(m) => Fail::Scim(ScimError::taken(m)),
            e @ (DirectoryError::Store(_) | DirectoryError::Corrupt(..)) => {
                Fail::Store(e.to_string())
            }
        }
    }
}

impl From<aalgate_session::StoreError> for Fail {
    fn from(e: aalgate_session::StoreError) -> Fail {
        Fail::Store(e.to_string())
    }
}

/// A successful answer: status, body, `Location`.
struct Answer {
    status: u16,
    body: Option<Value>,
    location: Option<String>,
}

fn ok(body: Value) -> Answer {
    Answer {
        status: 200,
        body: Some(body),
        location: None,
    }
}

/// One request to the service, with what its handlers need.
struct Call<'a> {
    st: &'a State,
    dir: &'a Directory,
    ctx: &'a Ctx,
    access: &'a crate::provisioning::ScimAccess,
    base: String,
}

/// Answers a request under [`PREFIX`].
pub(crate) async fn handle(st: &State, x: &mut Exchange<'_>, path: &str) -> Result<bool> {
    let svc = st.service();
    let Some(access) = svc.scim.clone() else {
        return x.error(Outcome::NotFound).await;
    };
    if !st.on_auth_origin(x.ctx) {
        return x.error(Outcome::NotFound).await;
    }
    let auth = x
        .session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    if !access.accepts(auth.as_deref()) {
        tracing::info!(request_id = %x.ctx.request_id, "SCIM request without the provisioning token");
        let e = ScimError::status(
            401,
            "this needs the provisioning token: Authorization: Bearer <token from `aalgate scim token`>",
        );
        return send(x, Outcome::ScimUnauthorized, Err(Fail::Scim(e))).await;
    }
    let method = x.session.req_header().method.clone();
    let query = x.session.req_header().uri.query().map(str::to_string);
    let rest = path[PREFIX.len()..].trim_end_matches('/').to_string();
    let body: Result<Value, ScimError> =
        if [http::Method::POST, http::Method::PUT, http::Method::PATCH].contains(&method) {
            match crate::http::read_limited_within(x.session, MAX_SCIM_BODY, st.client_timeout)
                .await
            {
                Err(crate::http::BodyError::TooLarge) => {
                    let e =
                        ScimError::status(413, format!("the body is over {MAX_SCIM_BODY} bytes"));
                    return send(x, Outcome::Scim, Err(Fail::Scim(e))).await;
                }
                Err(crate::http::BodyError::Broken(o)) => return x.broken_body(o).await,
                Ok(b) => serde_json::from_slice::<Value>(&b).map_err(|e| {
                    ScimError::bad(
                        ScimType::InvalidSyntax,
                        format!("the body is not JSON: {e}"),
                    )
                }),
            }
        } else {
            Ok(Value::Null)
        };
    let call = Call {
        st,
        dir: &svc.dir,
        ctx: x.ctx,
        access: &access,
        base: format!("{}{PREFIX}", svc.origin),
    };
    let answer = route(&call, &method, &rest, query.as_deref(), body).await;
    send(x, Outcome::Scim, answer).await
}

async fn send(
    x: &mut Exchange<'_>,
    outcome: Outcome,
    answer: Result<Answer, Fail>,
) -> Result<bool> {
    x.ctx.outcome = outcome;
    let reply = match answer {
        Ok(a) => {
            let mut r = Reply::json(a.status, a.body.map(|b| b.to_string()).unwrap_or_default());
            r.content_type = CONTENT_TYPE;
            if let Some(l) = a.location {
                r = r.header("location", l);
            }
            r
        }
        Err(f) => {
            let e = match f {
                Fail::Scim(e) => e,
                Fail::Store(why) => {
                    tracing::warn!(request_id = %x.ctx.request_id, error = %why, "SCIM: store unavailable");
                    x.ctx.outcome = Outcome::StoreUnavailable;
                    ScimError::status(503, "the session store is unavailable; nothing was changed past this point, retry")
                }
            };
            let mut r = Reply::json(e.status, e.to_json());
            r.content_type = CONTENT_TYPE;
            match e.status {
                401 => r.header("www-authenticate", "Bearer realm=\"aalgate-scim\"".into()),
                503 => r.header("retry-after", "5".into()),
                _ => r,
            }
        }
    };
    x.send(reply).await
}

async fn route(
    c: &Call<'_>,
    method: &http::Method,
    rest: &str,
    query: Option<&str>,
    body: Result<Value, ScimError>,
) -> Result<Answer, Fail> {
    use http::Method as M;
    // Read only where a body is taken: a POST to a discovery endpoint is 405, not 400.
    let body = || body.clone().map_err(Fail::Scim);
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let get = method == M::GET || method == M::HEAD;
    let list_query = || {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        ListQuery::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    };
    match (segs.as_slice(), method) {
        (["ServiceProviderConfig"], _) if get => {
            Ok(ok(discovery::service_provider_config(&c.base)))
        }
        (["Schemas"], _) if get => {
            let all = discovery::schemas(&c.base);
            Ok(ok(list_json(all.len(), 1, all)))
        }
        (["Schemas", id], _) if get => one_of(discovery::schemas(&c.base), id, "schema"),
        (["ResourceTypes"], _) if get => {
            let all = discovery::resource_types(&c.base);
            Ok(ok(list_json(all.len(), 1, all)))
        }
        (["ResourceTypes", id], _) if get => {
            one_of(discovery::resource_types(&c.base), id, "resource type")
        }
        (["Users"], _) if get => list(c, Kind::Users, &list_query()?).await,
        (["Users"], m) if m == M::POST => create_user(c, &body()?).await,
        (["Users", ".search"], m) if m == M::POST => {
            list(c, Kind::Users, &ListQuery::from_search(&body()?)?).await
        }
        (["Users", id], _) if get => {
            Ok(ok(projected(user_resource(c, id).await?.1, &list_query()?)))
        }
        (["Users", id], m) if m == M::PUT => change_user(c, id, Change::Put(&body()?)).await,
        (["Users", id], m) if m == M::PATCH => change_user(c, id, Change::Patch(&body()?)).await,
        (["Users", id], m) if m == M::DELETE => delete_user(c, id).await,
        (["Groups"], _) if get => list(c, Kind::Groups, &list_query()?).await,
        (["Groups"], m) if m == M::POST => create_group(c, &body()?).await,
        (["Groups", ".search"], m) if m == M::POST => {
            list(c, Kind::Groups, &ListQuery::from_search(&body()?)?).await
        }
        (["Groups", id], _) if get => Ok(ok(projected(
            group_resource(c, id).await?.0,
            &list_query()?,
        ))),
        (["Groups", id], m) if m == M::PUT => change_group(c, id, Change::Put(&body()?)).await,
        (["Groups", id], m) if m == M::PATCH => change_group(c, id, Change::Patch(&body()?)).await,
        (["Groups", id], m) if m == M::DELETE => delete_group(c, id).await,
        ([".search"], m) if m == M::POST => {
            list(c, Kind::Both, &ListQuery::from_search(&body()?)?).await
        }
        (
            ["ServiceProviderConfig" | "Schemas" | "ResourceTypes" | "Users" | "Groups" | ".search"],
            _,
        )
        | (["Schemas" | "ResourceTypes" | "Users" | "Groups", _], _) => Err(Fail::Scim(
            ScimError::status(405, format!("{method} is not supported here")),
        )),
        _ => Err(Fail::Scim(ScimError::not_found(format!(
            "no SCIM endpoint {PREFIX}{rest}"
        )))),
    }
}

fn projected(mut v: Value, q: &ListQuery) -> Value {
    aalgate_scim::project(&mut v, &q.attributes, &q.excluded);
    v
}

fn one_of(all: Vec<Value>, id: &str, what: &str) -> Result<Answer, Fail> {
    all.into_iter()
        .find(|v| v["id"] == id)
        .map(ok)
        .ok_or_else(|| Fail::Scim(ScimError::not_found(format!("no {what} {id}"))))
}

fn now(c: &Call<'_>) -> String {
    rfc3339(c.st.clock.now())
}

async fn user_attrs(c: &Call<'_>, id: &str) -> Result<Option<UserAttrs>, Fail> {
    match c.dir.store().kv_get(SCIM_USER_NS, id).await? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| Fail::Store(format!("corrupt {SCIM_USER_NS} record of {id}: {e}"))),
    }
}

fn view_json(c: &Call<'_>, u: &User, attrs: Option<&UserAttrs>) -> Value {
    let created = rfc3339(u.created);
    user_json(
        &UserView {
            id: &u.handle.to_string(),
            user_name: &u.id,
            display_name: &u.display_name,
            active: !u.disabled,
            attrs,
            created: &created,
        },
        &c.base,
    )
}

/// The user with resource id `id` (a handle), and its resource.
async fn user_resource(c: &Call<'_>, id: &str) -> Result<(User, Value, Option<UserAttrs>), Fail> {
    let gone = || Fail::Scim(ScimError::not_found(format!("no user {id}")));
    let handle = uuid::Uuid::parse_str(id).map_err(|_| gone())?;
    let u = c.dir.user_by_handle(handle).await?.ok_or_else(gone)?;
    let attrs = user_attrs(c, &u.id).await?;
    let v = view_json(c, &u, attrs.as_ref());
    Ok((u, v, attrs))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Users,
    Groups,
    Both,
}

/// `userName eq "x"`: the one question directories ask before each creation, answered
/// without reading the whole directory.
fn user_name_eq(q: &ListQuery) -> Option<String> {
    use scim_v2::filter::{AttrExp, CompValue, CompareOp, Filter};
    match &q.filter {
        Some(Filter::Attr(AttrExp::Comparison(p, CompareOp::Eq, CompValue::Str(v))))
            if p.sub_attr.is_none()
                && p.name.eq_ignore_ascii_case("userName")
                && p.uri
                    .as_deref()
                    .is_none_or(|u| u.eq_ignore_ascii_case(aalgate_scim::USER_URN)) =>
        {
            Some(v.clone())
        }
        _ => None,
    }
}

async fn all_users(c: &Call<'_>, q: &ListQuery) -> Result<Vec<Value>, Fail> {
    let mut attrs: BTreeMap<String, UserAttrs> = BTreeMap::new();
    let users = if let Some(name) = user_name_eq(q) {
        // User names are unique without case, and nearly always lowercase.
        let mut found = None;
        for n in [name.clone(), name.to_lowercase()] {
            if let Some(u) = c.dir.user(&n).await? {
                found = Some(u);
                break;
            }
        }
        found.into_iter().collect::<Vec<User>>()
    } else {
        for (k, v) in c.dir.store().kv_list(SCIM_USER_NS).await? {
            if let Ok(a) = serde_json::from_slice::<UserAttrs>(&v) {
                attrs.insert(k, a);
            }
        }
        c.dir.users().await?
    };
    let mut out = Vec::with_capacity(users.len());
    for u in &users {
        let a = match attrs.get(&u.id) {
            Some(a) => Some(a.clone()),
            None if user_name_eq(q).is_some() => user_attrs(c, &u.id).await?,
            None => None,
        };
        out.push(view_json(c, u, a.as_ref()));
    }
    out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(out)
}

/// Every group: those the directory created and those people are in, with their members'
/// resource ids.
async fn all_groups(
    c: &Call<'_>,
) -> Result<BTreeMap<String, (Option<GroupAttrs>, Vec<String>)>, Fail> {
    let mut out: BTreeMap<String, (Option<GroupAttrs>, Vec<String>)> = BTreeMap::new();
    for (k, v) in c.dir.store().kv_list(SCIM_GROUP_NS).await? {
        if let Ok(a) = serde_json::from_slice::<GroupAttrs>(&v) {
            out.insert(k, (Some(a), Vec::new()));
        }
    }
    let handles: BTreeMap<String, String> = c
        .dir
        .users()
        .await?
        .into_iter()
        .map(|u| (u.id, u.handle.to_string()))
        .collect();
    for (g, users) in c.dir.groups().await? {
        // People with groups but no account yet (an invite's groups) are not SCIM users.
        let members: Vec<String> = users
            .iter()
            .filter_map(|u| handles.get(u).cloned())
            .collect();
        if !members.is_empty() {
            out.entry(g).or_insert((None, Vec::new())).1.extend(members);
        }
    }
    for (_, m) in out.values_mut() {
        m.sort();
    }
    // Groups outside `scim.groups` are IT's alone: the directory neither sees nor changes them.
    out.retain(|name, _| c.access.may_manage(name));
    Ok(out)
}

async fn list(c: &Call<'_>, kind: Kind, q: &ListQuery) -> Result<Answer, Fail> {
    let mut items = Vec::new();
    if kind != Kind::Groups {
        items.extend(all_users(c, q).await?);
    }
    if kind != Kind::Users {
        items.extend(
            all_groups(c)
                .await?
                .into_iter()
                .map(|(name, (a, m))| group_json(&name, a.as_ref(), &m, &c.base)),
        );
    }
    if let Some(f) = &q.filter {
        items.retain(|v| aalgate_scim::matches(f, v));
    }
    let (total, mut page) = q.page(items);
    for v in &mut page {
        aalgate_scim::project(v, &q.attributes, &q.excluded);
    }
    Ok(ok(list_json(total, q.start_index, page)))
}

fn audit(c: &Call<'_>, event: &str, user: Option<&str>, detail: String) {
    c.st.audit.emit_for(
        &c.ctx.audit,
        &crate::audit::Event {
            time: crate::audit::now_rfc3339(),
            event,
            request_id: Some(&c.ctx.request_id),
            user,
            operator: Some(format!("scim:{}", c.access.client)),
            detail: Some(detail),
            ..Default::default()
        },
    );
}

async fn create_user(c: &Call<'_>, body: &Value) -> Result<Answer, Fail> {
    let u = UserIn::parse(body)?;
    let disabled = !u.active;
    // One address per person, checked before anything is written.
    if let Some(e) = u.email() {
        c.dir.email_is_free(e, &u.user_name).await?;
    }
    let user = c
        .dir
        .create_user(&u.user_name, &u.shown_name(), disabled, c.st.clock.now())
        .await?;
    audit(
        c,
        "user_provisioned",
        Some(&user.id),
        format!(
            "account created{}; it has no credential yet",
            if disabled { ", disabled" } else { "" }
        ),
    );
    if let Some(e) = u.email() {
        if let Err(e) = c.dir.set_email(&user.id, Some(e)).await {
            // Taken meanwhile: the account this request made is not left half made (only
            // it: an invite or groups IT set for the name stay).
            let store = c.dir.store();
            let undone = async {
                store.kv_delete("user", &user.id).await?;
                store.kv_delete("handle", &user.handle.to_string()).await
            }
            .await;
            audit(
                c,
                "user_removed",
                Some(&user.id),
                format!(
                    "account creation undone{}: its e-mail address could not be set",
                    if undone.is_ok() {
                        ""
                    } else {
                        " (not all of it: the store failed)"
                    }
                ),
            );
            return Err(e.into());
        }
    }
    let t = now(c);
    let attrs = u.attrs(&t, &t);
    put_attrs(c, &user.id, &attrs).await?;
    let v = view_json(c, &user, Some(&attrs));
    let location = v["meta"]["location"].as_str().map(str::to_string);
    Ok(Answer {
        status: 201,
        body: Some(v),
        location,
    })
}

async fn put_attrs(c: &Call<'_>, id: &str, a: &UserAttrs) -> Result<(), Fail> {
    let bytes = serde_json::to_vec(a).map_err(|e| Fail::Store(e.to_string()))?;
    c.dir.store().kv_put(SCIM_USER_NS, id, &bytes, None).await?;
    Ok(())
}

enum Change<'a> {
    Put(&'a Value),
    Patch(&'a Value),
}

async fn change_user(c: &Call<'_>, id: &str, change: Change<'_>) -> Result<Answer, Fail> {
    let (user, current, attrs) = user_resource(c, id).await?;
    let new = match change {
        Change::Put(body) => UserIn::parse(body)?,
        Change::Patch(body) => {
            let mut v = current;
            aalgate_scim::apply_patch(&mut v, body)?;
            UserIn::parse(&v)?
        }
    };
    if !new.user_name.eq_ignore_ascii_case(&user.id) {
        return Err(Fail::Scim(ScimError::bad(
            ScimType::Mutability,
            format!("userName {} cannot change: it is the name the audit trail and apps know this person by; create a new user instead", user.id),
        )));
    }
    let mut changed = Vec::new();
    // Access first: a person being disabled loses every session before anything else.
    set_active(c, &user, new.active).await?;
    let before = c.dir.membership(&user.id).await?;
    let email = new.email();
    if before.email.as_deref() != email {
        c.dir.set_email(&user.id, email).await?;
        changed.push("e-mail");
    }
    let shown = new.shown_name();
    if shown != user.display_name {
        c.dir.set_display_name(&user.id, &shown).await?;
        changed.push("display name");
    }
    let created = attrs
        .as_ref()
        .map(|a| a.created.clone())
        .unwrap_or_else(|| rfc3339(user.created));
    let mut fresh = new.attrs(&created, &now(c));
    if let Some(old) = &attrs {
        let mut same = fresh.clone();
        same.last_modified = old.last_modified.clone();
        if &same == old {
            fresh = same;
        } else {
            changed.push("directory attributes");
        }
    } else {
        changed.push("directory attributes");
    }
    put_attrs(c, &user.id, &fresh).await?;
    if !changed.is_empty() {
        audit(
            c,
            "user_changed",
            Some(&user.id),
            format!("{} set by the directory", changed.join(", ")),
        );
    }
    let (_, v, _) = user_resource(c, id).await?;
    Ok(ok(v))
}

/// `active` as the directory says: disabled (every session ends), or enabled again if the
/// directory was the one that disabled the person.
async fn set_active(c: &Call<'_>, user: &User, active: bool) -> Result<(), Fail> {
    match (active, user.disabled) {
        (false, false) => {
            let n = c.dir.disable_by_directory(&user.id).await?;
            audit(
                c,
                "user_disabled",
                Some(&user.id),
                format!("{n} session(s) ended"),
            );
        }
        (true, true) => {
            if c.dir.enable_by_directory(&user.id).await? {
                audit(
                    c,
                    "user_enabled",
                    Some(&user.id),
                    "may sign in again".into(),
                );
            } else if c.dir.disabled_by_operator(&user.id).await? {
                // IT's own `users disable` (an incident, a leaver the directory has not
                // caught up with) is not the directory's to lift.
                audit(
                    c,
                    "user_enable_refused",
                    Some(&user.id),
                    "disabled by IT: only `aalgate users enable` lifts it".into(),
                );
            }
        }
        _ => {}
    }
    Ok(())
}

async fn delete_user(c: &Call<'_>, id: &str) -> Result<Answer, Fail> {
    let (user, _, _) = user_resource(c, id).await?;
    let (n, creds) = c.dir.remove_user(&user.id).await?;
    audit(
        c,
        "user_removed",
        Some(&user.id),
        format!(
            "{n} session(s) ended; account, groups and {} credential(s) removed{}",
            creds.len(),
            if creds.is_empty() {
                String::new()
            } else {
                format!(" ({})", creds.join(", "))
            }
        ),
    );
    c.dir.store().kv_delete(SCIM_USER_NS, &user.id).await?;
    Ok(Answer {
        status: 204,
        body: None,
        location: None,
    })
}

/// The group named `id`, its resource, record and members' resource ids.
async fn group_resource(
    c: &Call<'_>,
    id: &str,
) -> Result<(Value, Option<GroupAttrs>, Vec<String>), Fail> {
    let gone = || Fail::Scim(ScimError::not_found(format!("no group {id}")));
    if !aalgate_policy::valid_group(id) {
        return Err(gone());
    }
    let mut all = all_groups(c).await?;
    let (attrs, members) = all.remove(id).ok_or_else(gone)?;
    Ok((
        group_json(id, attrs.as_ref(), &members, &c.base),
        attrs,
        members,
    ))
}

/// The account behind each member resource id; an unknown one is refused.
async fn member_accounts(c: &Call<'_>, ids: &[String]) -> Result<BTreeMap<String, String>, Fail> {
    let mut out = BTreeMap::new();
    for id in ids {
        let unknown = || {
            Fail::Scim(ScimError::bad(
                ScimType::InvalidValue,
                format!("member {id} is not a user here"),
            ))
        };
        let h = uuid::Uuid::parse_str(id).map_err(|_| unknown())?;
        let u = c.dir.user_by_handle(h).await?.ok_or_else(unknown)?;
        out.insert(id.clone(), u.id);
    }
    Ok(out)
}

/// Makes the group's members exactly `want` (resource ids), through the CLI's group change:
/// on every instance within a second.
async fn set_members(
    c: &Call<'_>,
    group: &str,
    have: &[String],
    want: &[String],
) -> Result<(usize, usize), Fail> {
    let want_set: BTreeSet<&String> = want.iter().collect();
    let have_set: BTreeSet<&String> = have.iter().collect();
    let adding: Vec<String> = want_set
        .difference(&have_set)
        .map(|s| (*s).clone())
        .collect();
    let removing: Vec<String> = have_set
        .difference(&want_set)
        .map(|s| (*s).clone())
        .collect();
    let accounts = member_accounts(c, &adding).await?;
    let leaving = member_accounts(c, &removing).await?;
    let g = vec![group.to_string()];
    // Removals first: access ends before any is granted.
    for user in leaving.values() {
        c.dir.change_groups(user, &[], &g).await?;
        audit(c, "groups_changed", Some(user), format!("removed {group}"));
    }
    for user in accounts.values() {
        c.dir.change_groups(user, &g, &[]).await?;
        audit(c, "groups_changed", Some(user), format!("added {group}"));
    }
    Ok((accounts.len(), leaving.len()))
}

async fn create_group(c: &Call<'_>, body: &Value) -> Result<Answer, Fail> {
    let g = GroupIn::parse(body)?;
    if !c.access.may_manage(&g.name) {
        return Err(Fail::Scim(ScimError::status(
            403,
            format!("group {} is not the directory's to manage: add it to scim.groups, or manage it with `aalgate users groups`", g.name),
        )));
    }
    if all_groups(c).await?.contains_key(&g.name) {
        return Err(Fail::Scim(ScimError::taken(format!(
            "group {} exists already",
            g.name
        ))));
    }
    // Members are checked before anything is written.
    member_accounts(c, &g.members).await?;
    let t = now(c);
    let attrs = GroupAttrs {
        external_id: g.external_id.clone(),
        created: t.clone(),
        last_modified: t,
    };
    let bytes = serde_json::to_vec(&attrs).map_err(|e| Fail::Store(e.to_string()))?;
    if !c
        .dir
        .store()
        .kv_swap(SCIM_GROUP_NS, &g.name, None, Some(&bytes))
        .await?
    {
        return Err(Fail::Scim(ScimError::taken(format!(
            "group {} exists already",
            g.name
        ))));
    }
    let (added, _) = set_members(c, &g.name, &[], &g.members).await?;
    audit(
        c,
        "group_provisioned",
        None,
        format!("group {} created with {added} member(s)", g.name),
    );
    let (v, _, _) = group_resource(c, &g.name).await?;
    let location = v["meta"]["location"].as_str().map(str::to_string);
    Ok(Answer {
        status: 201,
        body: Some(v),
        location,
    })
}

async fn change_group(c: &Call<'_>, id: &str, change: Change<'_>) -> Result<Answer, Fail> {
    let (current, attrs, have) = group_resource(c, id).await?;
    let new = match change {
        Change::Put(body) => GroupIn::parse(body)?,
        Change::Patch(body) => {
            let mut v = current;
            aalgate_scim::apply_patch(&mut v, body)?;
            GroupIn::parse(&v)?
        }
    };
    if new.name != id {
        return Err(Fail::Scim(ScimError::bad(
            ScimType::Mutability,
            format!("group {id} cannot be renamed: policies name it; create the new group, move the members, and change the policies"),
        )));
    }
    let t = now(c);
    let record = GroupAttrs {
        external_id: new.external_id.clone(),
        created: attrs
            .as_ref()
            .map(|a| a.created.clone())
            .unwrap_or_else(|| t.clone()),
        last_modified: t,
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| Fail::Store(e.to_string()))?;
    c.dir
        .store()
        .kv_put(SCIM_GROUP_NS, id, &bytes, None)
        .await?;
    let (added, removed) = set_members(c, id, &have, &new.members).await?;
    if added + removed > 0 {
        audit(
            c,
            "group_changed",
            None,
            format!("group {id}: {added} member(s) added, {removed} removed"),
        );
    }
    let (v, _, _) = group_resource(c, id).await?;
    Ok(ok(v))
}

async fn delete_group(c: &Call<'_>, id: &str) -> Result<Answer, Fail> {
    let (_, _, have) = group_resource(c, id).await?;
    let (_, removed) = set_members(c, id, &have, &[]).await?;
    c.dir.store().kv_delete(SCIM_GROUP_NS, id).await?;
    audit(
        c,
        "group_removed",
        None,
        format!("group {id} removed from {removed} member(s)"),
    );
    Ok(Answer {
        status: 204,
        body: None,
        location: None,
    })
}
