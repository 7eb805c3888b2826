//! List and search parameters (RFC 7644 §3.4.2, §3.4.3).

use scim_v2::filter::Filter;
use serde_json::Value;

use crate::error::{ScimError, ScimType};
use crate::resource::field;

/// Results per page when the client names no `count`.
pub const DEFAULT_COUNT: usize = 100;
/// Most results per page (`filter.maxResults` in the service provider config).
pub const MAX_COUNT: usize = 200;
/// Longest filter read.
pub const MAX_FILTER_LEN: usize = 2048;

/// What a list or search asks for.
#[derive(Debug, Default)]
pub struct ListQuery {
    /// Only resources that match.
    pub filter: Option<Filter>,
    /// 1-based.
    pub start_index: usize,
    /// Page size (at most [`MAX_COUNT`]).
    pub count: usize,
    /// Return only these attributes.
    pub attributes: Vec<String>,
    /// Return all but these.
    pub excluded: Vec<String>,
}

fn filter(s: &str) -> Result<Filter, ScimError> {
    if s.len() > MAX_FILTER_LEN {
        return Err(ScimError::bad(
            ScimType::InvalidFilter,
            format!("the filter is longer than {MAX_FILTER_LEN} bytes"),
        ));
    }
    s.parse::<Filter>().map_err(|e| {
        ScimError::bad(
            ScimType::InvalidFilter,
            format!("the filter does not parse: {e}"),
        )
    })
}

/// RFC 7644: a `startIndex` below 1 is 1; a negative `count` is 0.
fn number(name: &str, s: &str) -> Result<i64, ScimError> {
    s.trim()
        .parse::<i64>()
        .map_err(|_| ScimError::bad(ScimType::InvalidValue, format!("{name} must be an integer")))
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

impl ListQuery {
    fn new() -> ListQuery {
        ListQuery {
            start_index: 1,
            count: DEFAULT_COUNT,
            ..ListQuery::default()
        }
    }

    fn set_start(&mut self, n: i64) {
        self.start_index = usize::try_from(n.max(1)).unwrap_or(1);
    }

    fn set_count(&mut self, n: i64) {
        self.count = usize::try_from(n.max(0)).unwrap_or(0).min(MAX_COUNT);
    }

    /// From a query string's decoded pairs.
    pub fn from_pairs<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<ListQuery, ScimError> {
        let mut q = ListQuery::new();
        for (k, v) in pairs {
            match k {
                "filter" => q.filter = Some(filter(v)?),
                "startIndex" => q.set_start(number(k, v)?),
                "count" => q.set_count(number(k, v)?),
                "attributes" => q.attributes = list(v),
                "excludedAttributes" => q.excluded = list(v),
                // sortBy is not supported (the config says so): results come sorted by id.
                _ => {}
            }
        }
        Ok(q)
    }

    /// From a `POST .search` body.
    pub fn from_search(body: &Value) -> Result<ListQuery, ScimError> {
        let obj = body.as_object().ok_or_else(|| {
            ScimError::bad(
                ScimType::InvalidSyntax,
                "a SearchRequest must be a JSON object",
            )
        })?;
        let mut q = ListQuery::new();
        if let Some(f) = field(obj, "filter") {
            let f = f.as_str().ok_or_else(|| {
                ScimError::bad(ScimType::InvalidFilter, "filter must be a string")
            })?;
            q.filter = Some(filter(f)?);
        }
        let int = |name: &str| -> Result<Option<i64>, ScimError> {
            match field(obj, name) {
                None => Ok(None),
                Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| {
                    ScimError::bad(ScimType::InvalidValue, format!("{name} must be an integer"))
                }),
                Some(Value::String(s)) => number(name, s).map(Some),
                Some(_) => Err(ScimError::bad(
                    ScimType::InvalidValue,
                    format!("{name} must be an integer"),
                )),
            }
        };
        if let Some(n) = int("startIndex")? {
            q.set_start(n);
        }
        if let Some(n) = int("count")? {
            q.set_count(n);
        }
        let names = |name: &str| -> Vec<String> {
            match field(obj, name) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                Some(Value::String(s)) => list(s),
                _ => Vec::new(),
            }
        };
        q.attributes = names("attributes");
        q.excluded = names("excludedAttributes");
        Ok(q)
    }

    /// The page of `items` (already filtered and sorted): the total and the slice.
    pub fn page<T>(&self, items: Vec<T>) -> (usize, Vec<T>) {
        let total = items.len();
        let page = items
            .into_iter()
            .skip(self.start_index - 1)
            .take(self.count)
            .collect();
        (total, page)
    }
}
