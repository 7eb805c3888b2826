//! Filters, PATCH and attribute projection on the JSON form of a resource (RFC 7644 §3.4.2.2,
//! §3.5.2, §3.9). Attribute names match without case; unknown attributes are dropped when the
//! result is parsed back into a [`crate::UserIn`] or [`crate::GroupIn`].

use scim_v2::filter::{
    AttrExp, AttrPath, CompValue, CompareOp, Filter, PatchPath, PatchValuePath, ValFilter,
};
use scim_v2::models::others::{OperationTarget, PatchOperation};
use serde_json::{Map, Value};

use crate::error::{ScimError, ScimType};
use crate::resource::{field, strip_urn};

/// Most operations in one PATCH (directories put many members in one operation; each
/// operation may scan a list of up to 20 000).
const MAX_OPS: usize = 256;
/// Largest resource a PATCH may produce, in bytes of JSON (a group of 20 000 members is
/// under 2 MiB): a value copied into every element of a list is refused before it is built.
const MAX_PATCHED: usize = 8 * 1024 * 1024;

fn too_big() -> ScimError {
    ScimError::bad(
        ScimType::TooMany,
        format!("this PATCH would make the resource larger than {MAX_PATCHED} bytes"),
    )
}

/// Takes `n` copies of `value` from what the PATCH may still insert.
fn spend(left: &mut usize, value: &Value, n: usize) -> Result<(), ScimError> {
    let size = serde_json::to_string(value)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    let cost = size.saturating_mul(n);
    if cost > *left {
        return Err(too_big());
    }
    *left -= cost;
    Ok(())
}

/// Appends what is not there yet (compared as JSON text: one pass, not one scan per value).
fn append_new(cur: &mut Vec<Value>, new: Vec<Value>) {
    let mut seen: std::collections::HashSet<String> = cur.iter().map(Value::to_string).collect();
    for n in new {
        if seen.insert(n.to_string()) {
            cur.push(n);
        }
    }
}

/// Attributes compared with case (RFC 7643: `id` and `externalId` are `caseExact`).
fn case_exact(p: &AttrPath) -> bool {
    p.sub_attr.is_none()
        && (crate::same_name(&p.name, "id") || crate::same_name(&p.name, "externalId"))
        || p.sub_attr.as_deref().is_some_and(|s| s == "$ref")
}

/// A path into an extension aalgate keeps nothing of.
fn foreign(p: &AttrPath) -> bool {
    p.uri.as_deref().is_some_and(|u| {
        !u.eq_ignore_ascii_case(crate::USER_URN) && !u.eq_ignore_ascii_case(crate::GROUP_URN)
    })
}

/// The values `p` names in `res`, over every element of a multi-valued attribute (an
/// attribute of complex values without a sub-attribute means their `value`).
fn values<'a>(res: &'a Value, p: &AttrPath) -> Vec<&'a Value> {
    let Some(obj) = res.as_object() else {
        return Vec::new();
    };
    if foreign(p) {
        return Vec::new();
    }
    let Some(top) = field(obj, &p.name) else {
        return Vec::new();
    };
    let items: Vec<&Value> = match top {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    let sub = p.sub_attr.as_deref().or(top.is_array().then_some("value"));
    match sub {
        None => items,
        Some(s) => items
            .into_iter()
            .filter_map(|i| match i {
                Value::Object(o) => field(o, s),
                v if p.sub_attr.is_none() => Some(v),
                _ => None,
            })
            .collect(),
    }
}

fn compare(op: &CompareOp, actual: &Value, want: &CompValue, exact: bool) -> bool {
    match (actual, want) {
        (Value::String(a), CompValue::Str(w)) => {
            let (a, w) = if exact {
                (a.clone(), w.clone())
            } else {
                (a.to_lowercase(), w.to_lowercase())
            };
            match op {
                CompareOp::Eq => a == w,
                CompareOp::Ne => a != w,
                CompareOp::Co => a.contains(&w),
                CompareOp::Sw => a.starts_with(&w),
                CompareOp::Ew => a.ends_with(&w),
                CompareOp::Gt => a > w,
                CompareOp::Ge => a >= w,
                CompareOp::Lt => a < w,
                CompareOp::Le => a <= w,
            }
        }
        (Value::Bool(a), CompValue::True | CompValue::False) => {
            let w = matches!(want, CompValue::True);
            match op {
                CompareOp::Eq => *a == w,
                CompareOp::Ne => *a != w,
                _ => false,
            }
        }
        // Entra ID's "True"/"False" strings are stored as booleans; a filter on a string
        // attribute with a boolean matches nothing.
        (Value::Number(a), CompValue::Number(w)) => match (a.as_f64(), w.as_f64()) {
            (Some(a), Some(w)) => match op {
                CompareOp::Eq => a == w,
                CompareOp::Ne => a != w,
                CompareOp::Gt => a > w,
                CompareOp::Ge => a >= w,
                CompareOp::Lt => a < w,
                CompareOp::Le => a <= w,
                _ => false,
            },
            _ => false,
        },
        _ => matches!(op, CompareOp::Ne),
    }
}

fn attr_exp(e: &AttrExp, res: &Value) -> bool {
    match e {
        AttrExp::Present(p) => values(res, p).iter().any(|v| match v {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        }),
        AttrExp::Comparison(p, op, CompValue::Null) => {
            let absent = values(res, p).is_empty();
            match op {
                CompareOp::Eq => absent,
                CompareOp::Ne => !absent,
                _ => false,
            }
        }
        AttrExp::Comparison(p, op, want) => {
            let vs = values(res, p);
            let exact = case_exact(p);
            if matches!(op, CompareOp::Ne) {
                !vs.iter().any(|v| compare(&CompareOp::Eq, v, want, exact))
            } else {
                vs.iter().any(|v| compare(op, v, want, exact))
            }
        }
    }
}

fn val_filter(f: &ValFilter, element: &Value) -> bool {
    match f {
        ValFilter::Attr(e) => attr_exp(e, element),
        ValFilter::Not(x) => !val_filter(x, element),
        ValFilter::And(a, b) => val_filter(a, element) && val_filter(b, element),
        ValFilter::Or(a, b) => val_filter(a, element) || val_filter(b, element),
    }
}

/// Whether a resource matches a filter.
pub fn matches(f: &Filter, res: &Value) -> bool {
    match f {
        Filter::Attr(e) => attr_exp(e, res),
        Filter::ValuePath(vp) => {
            let Some(obj) = res.as_object() else {
                return false;
            };
            match field(obj, &vp.attr.name) {
                Some(Value::Array(a)) => a.iter().any(|el| val_filter(&vp.filter, el)),
                Some(v @ Value::Object(_)) => val_filter(&vp.filter, v),
                _ => false,
            }
        }
        Filter::Not(x) => !matches(x, res),
        Filter::And(a, b) => matches(a, res) && matches(b, res),
        Filter::Or(a, b) => matches(a, res) || matches(b, res),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Add,
    Replace,
}

/// The key `name` has in `obj` (any case), or `name` itself.
fn key_of(obj: &Map<String, Value>, name: &str) -> String {
    obj.keys()
        .find(|k| crate::same_name(k, name) || crate::same_name(strip_urn(k), name))
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

fn set(obj: &mut Map<String, Value>, name: &str, v: Value) {
    let k = key_of(obj, name);
    obj.insert(k, v);
}

/// Sub-attributes given replace or add; the rest stay (RFC 7644 §3.5.2.3).
fn merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        set(into, &k, v);
    }
}

fn syntax(what: impl Into<String>) -> ScimError {
    ScimError::bad(ScimType::InvalidSyntax, what)
}

/// Applies a PatchOp body to a resource's JSON. Accepts what real clients send: Entra ID's
/// capitalised `op`s and path-less values whose keys are paths, Okta's path-less `active`.
pub fn apply_patch(res: &mut Value, body: &Value) -> Result<(), ScimError> {
    let body = body
        .as_object()
        .ok_or_else(|| syntax("a PatchOp body must be a JSON object"))?;
    let ops = field(body, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| syntax("a PatchOp body needs \"Operations\", a list"))?;
    if ops.is_empty() {
        return Err(syntax("\"Operations\" is empty"));
    }
    if ops.len() > MAX_OPS {
        return Err(ScimError::bad(
            ScimType::TooMany,
            format!("at most {MAX_OPS} operations per PATCH"),
        ));
    }
    // One budget for everything this PATCH inserts: what it removes again is not given back.
    let start = serde_json::to_string(res)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    let mut left = MAX_PATCHED.saturating_sub(start);
    for raw in ops {
        let mut raw = raw.clone();
        if let Some(o) = raw.as_object_mut() {
            let op_key = key_of(o, "op");
            if let Some(Value::String(s)) = o.get(&op_key) {
                let s = s.to_ascii_lowercase();
                o.remove(&op_key);
                o.insert("op".into(), s.into());
            }
            let path_key = key_of(o, "path");
            if let Some(p) = o.remove(&path_key) {
                o.insert("path".into(), p);
            }
            let value_key = key_of(o, "value");
            if let Some(v) = o.remove(&value_key) {
                o.insert("value".into(), v);
            }
        }
        let op: PatchOperation = serde_json::from_value(raw).map_err(|e| {
            let m = e.to_string();
            if m.contains("path") {
                ScimError::bad(ScimType::InvalidPath, format!("PATCH: {m}"))
            } else {
                syntax(format!("PATCH: {m}"))
            }
        })?;
        apply_one(res, op, &mut left)?;
    }
    if serde_json::to_string(res)
        .map(|s| s.len())
        .unwrap_or(usize::MAX)
        > MAX_PATCHED
    {
        return Err(too_big());
    }
    Ok(())
}

fn apply_one(res: &mut Value, op: PatchOperation, left: &mut usize) -> Result<(), ScimError> {
    match op {
        PatchOperation::Add(OperationTarget::WithPath { path, value }) => {
            at_path(res, &path, value, Mode::Add, left)
        }
        PatchOperation::Replace(OperationTarget::WithPath { path, value }) => {
            at_path(res, &path, value, Mode::Replace, left)
        }
        PatchOperation::Add(OperationTarget::WithoutPath { value }) => {
            pathless(res, value, Mode::Add, left)
        }
        PatchOperation::Replace(OperationTarget::WithoutPath { value }) => {
            pathless(res, value, Mode::Replace, left)
        }
        PatchOperation::Remove { path, value } => remove(res, &path, value),
    }
}

fn pathless(
    res: &mut Value,
    value: Map<String, Value>,
    mode: Mode,
    left: &mut usize,
) -> Result<(), ScimError> {
    for (k, v) in value {
        let k = strip_urn(&k).to_string();
        if k.starts_with("urn:") {
            // A whole extension object (the enterprise User): aalgate keeps none of it.
            continue;
        }
        let path = if k.contains(['.', '[']) {
            // Entra ID: {"name.givenName": "Ann"}.
            k.parse::<PatchPath>().map_err(|e| {
                ScimError::bad(ScimType::InvalidPath, format!("PATCH value key {k:?}: {e}"))
            })?
        } else {
            PatchPath::Attr(AttrPath::with_name(k))
        };
        at_path(res, &path, v, mode, left)?;
    }
    Ok(())
}

fn target(res: &mut Value) -> Result<&mut Map<String, Value>, ScimError> {
    res.as_object_mut()
        .ok_or_else(|| syntax("the resource is not a JSON object"))
}

fn at_path(
    res: &mut Value,
    path: &PatchPath,
    value: Value,
    mode: Mode,
    left: &mut usize,
) -> Result<(), ScimError> {
    let obj = target(res)?;
    match path {
        PatchPath::Attr(p) => {
            if foreign(p) {
                return Ok(());
            }
            let key = key_of(obj, &p.name);
            let copies = match (&p.sub_attr, obj.get(&key)) {
                (Some(_), Some(Value::Array(a))) => a.len(),
                _ => 1,
            };
            spend(left, &value, copies)?;
            match &p.sub_attr {
                None => match (obj.get_mut(&key), value) {
                    (Some(Value::Array(cur)), Value::Array(new)) if mode == Mode::Add => {
                        append_new(cur, new);
                    }
                    (Some(Value::Array(cur)), v) if mode == Mode::Add && !v.is_null() => {
                        append_new(cur, vec![v]);
                    }
                    (Some(Value::Object(cur)), Value::Object(new)) => merge(cur, new),
                    (_, v) => {
                        obj.insert(key, v);
                    }
                },
                Some(sub) => {
                    let entry = obj.entry(key).or_insert_with(|| Value::Object(Map::new()));
                    match entry {
                        Value::Object(o) => set(o, sub, value),
                        Value::Array(a) => {
                            for el in a.iter_mut() {
                                if let Value::Object(o) = el {
                                    set(o, sub, value.clone());
                                }
                            }
                        }
                        other => {
                            let mut o = Map::new();
                            o.insert(sub.clone(), value);
                            *other = Value::Object(o);
                        }
                    }
                }
            }
            Ok(())
        }
        PatchPath::Value(vp) => value_path(obj, vp, value, mode, left),
    }
}

/// `emails[type eq "work"].value`: the matching elements, or (nothing matching, as Entra ID
/// sends for a person without a work address) a new element the filter's `eq`s describe.
fn value_path(
    obj: &mut Map<String, Value>,
    vp: &PatchValuePath,
    value: Value,
    _mode: Mode,
    left: &mut usize,
) -> Result<(), ScimError> {
    if foreign(&vp.attr) {
        return Ok(());
    }
    let key = key_of(obj, &vp.attr.name);
    let entry = obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if entry.is_null() {
        *entry = Value::Array(Vec::new());
    }
    let Value::Array(list) = entry else {
        return Err(ScimError::bad(
            ScimType::InvalidPath,
            format!("{} is not multi-valued", vp.attr),
        ));
    };
    let hits = list.iter().filter(|el| val_filter(&vp.filter, el)).count();
    spend(left, &value, hits.max(1))?;
    let mut hit = false;
    for el in list.iter_mut() {
        if !val_filter(&vp.filter, el) {
            continue;
        }
        hit = true;
        match (&vp.sub_attr, el) {
            (Some(s), Value::Object(o)) => set(o, s, value.clone()),
            (None, Value::Object(o)) => match value.clone() {
                Value::Object(new) => merge(o, new),
                _ => {
                    return Err(ScimError::bad(
                        ScimType::InvalidValue,
                        "the value must be an object",
                    ))
                }
            },
            _ => {}
        }
    }
    if hit {
        return Ok(());
    }
    let Some(mut seed) = eq_seed(&vp.filter) else {
        return Err(ScimError::bad(
            ScimType::NoTarget,
            format!("{vp} selects nothing"),
        ));
    };
    match (&vp.sub_attr, value) {
        (Some(s), v) => set(&mut seed, s, v),
        (None, Value::Object(new)) => merge(&mut seed, new),
        _ => {
            return Err(ScimError::bad(
                ScimType::InvalidValue,
                "the value must be an object",
            ))
        }
    }
    list.push(Value::Object(seed));
    Ok(())
}

/// The element a filter of `eq`s joined by `and` describes (`type eq "work"`).
fn eq_seed(f: &ValFilter) -> Option<Map<String, Value>> {
    match f {
        ValFilter::Attr(AttrExp::Comparison(p, CompareOp::Eq, v)) if p.sub_attr.is_none() => {
            let v = match v {
                CompValue::Str(s) => Value::String(s.clone()),
                CompValue::True => Value::Bool(true),
                CompValue::False => Value::Bool(false),
                CompValue::Number(n) => Value::Number(n.clone()),
                CompValue::Null => return None,
            };
            let mut m = Map::new();
            m.insert(p.name.clone(), v);
            Some(m)
        }
        ValFilter::And(a, b) => {
            let mut m = eq_seed(a)?;
            m.extend(eq_seed(b)?);
            Some(m)
        }
        _ => None,
    }
}

fn remove(res: &mut Value, path: &PatchPath, value: Option<Value>) -> Result<(), ScimError> {
    let obj = target(res)?;
    match path {
        PatchPath::Attr(p) => {
            if foreign(p) {
                return Ok(());
            }
            let key = key_of(obj, &p.name);
            match (&p.sub_attr, obj.get_mut(&key), value) {
                // Entra ID removes members as {"path": "members", "value": [{"value": id}]}.
                (None, Some(Value::Array(cur)), Some(Value::Array(gone))) => {
                    let ids: Vec<&Value> = gone
                        .iter()
                        .filter_map(|g| g.as_object().and_then(|o| field(o, "value")))
                        .collect();
                    cur.retain(|el| {
                        let v = el.as_object().and_then(|o| field(o, "value"));
                        !v.is_some_and(|v| ids.contains(&v))
                    });
                }
                (None, _, _) => {
                    obj.remove(&key);
                }
                (Some(sub), Some(Value::Object(o)), _) => {
                    let k = key_of(o, sub);
                    o.remove(&k);
                }
                (Some(sub), Some(Value::Array(a)), _) => {
                    for el in a.iter_mut() {
                        if let Value::Object(o) = el {
                            let k = key_of(o, sub);
                            o.remove(&k);
                        }
                    }
                }
                (Some(_), _, _) => {}
            }
            Ok(())
        }
        PatchPath::Value(vp) => {
            if foreign(&vp.attr) {
                return Ok(());
            }
            let key = key_of(obj, &vp.attr.name);
            if let Some(Value::Array(list)) = obj.get_mut(&key) {
                match &vp.sub_attr {
                    None => list.retain(|el| !val_filter(&vp.filter, el)),
                    Some(s) => {
                        for el in list.iter_mut() {
                            if val_filter(&vp.filter, el) {
                                if let Value::Object(o) = el {
                                    let k = key_of(o, s);
                                    o.remove(&k);
                                }
                            }
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

/// Keeps what `attributes` names (and `id`, `schemas`, `meta`), or drops what `excluded`
/// names (RFC 7644 §3.9). Names may carry the core schema's URN and a sub-attribute.
pub fn project(res: &mut Value, attributes: &[String], excluded: &[String]) {
    let Some(obj) = res.as_object_mut() else {
        return;
    };
    let split = |a: &str| -> (String, Option<String>) {
        let a = strip_urn(a);
        match a.split_once('.') {
            Some((t, s)) => (t.to_string(), Some(s.to_string())),
            None => (a.to_string(), None),
        }
    };
    if !attributes.is_empty() {
        let wanted: Vec<(String, Option<String>)> = attributes.iter().map(|a| split(a)).collect();
        let keys: Vec<String> = obj.keys().cloned().collect();
        for k in keys {
            if ["id", "schemas", "meta"].contains(&k.as_str()) {
                continue;
            }
            let subs: Vec<&Option<String>> = wanted
                .iter()
                .filter(|(t, _)| crate::same_name(t, &k))
                .map(|(_, s)| s)
                .collect();
            if subs.is_empty() {
                obj.remove(&k);
            } else if subs.iter().all(|s| s.is_some()) {
                let keep: Vec<&str> = subs.iter().filter_map(|s| s.as_deref()).collect();
                let strip = |o: &mut Map<String, Value>| {
                    o.retain(|sk, _| keep.iter().any(|w| crate::same_name(w, sk)));
                };
                match obj.get_mut(&k) {
                    Some(Value::Object(o)) => strip(o),
                    Some(Value::Array(a)) => a.iter_mut().for_each(|el| {
                        if let Value::Object(o) = el {
                            strip(o);
                        }
                    }),
                    _ => {}
                }
            }
        }
    }
    for e in excluded {
        let (t, sub) = split(e);
        if ["id", "schemas"].iter().any(|a| crate::same_name(a, &t)) {
            continue;
        }
        let k = key_of(obj, &t);
        match sub {
            None => {
                obj.remove(&k);
            }
            Some(s) => match obj.get_mut(&k) {
                Some(Value::Object(o)) => {
                    let sk = key_of(o, &s);
                    o.remove(&sk);
                }
                Some(Value::Array(a)) => a.iter_mut().for_each(|el| {
                    if let Value::Object(o) = el {
                        let sk = key_of(o, &s);
                        o.remove(&sk);
                    }
                }),
                _ => {}
            },
        }
    }
}
