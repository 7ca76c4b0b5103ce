//! Lists in pages: every list takes `?limit=N` (1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when
//! absent) and `?after=CURSOR`, answers a JSON array of at most `limit` items, and names the
//! cursor of the next page in the [`NEXT`] header while more follow. Lists of records under
//! one prefix (objects, plans, agents, runs, orphans) page in key order straight from the
//! store's pages; a plan's runs, groups and rollbacks (bounded by its history and retention)
//! page oldest first.
//!
//! A list request also holds one of [`LIST_SLOTS`] slots while it reads and encodes, so that
//! many concurrent readers queue instead of each holding a copy of the site in memory; one
//! that waits past [`LIST_WAIT`] gets a 503 `busy`.

use std::time::Duration;

use axum::extract::RawQuery;
use axum::http::HeaderValue;

use super::*;

/// Items in a page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 500;
/// Items in a page at most.
pub const MAX_LIMIT: usize = crate::state::MAX_PAGE;
/// The header naming the next page's cursor (absent on the last page).
pub const NEXT: &str = "x-next-after";
/// List requests served at once; the others wait.
pub const LIST_SLOTS: usize = 16;
/// How long a list request waits for a slot.
pub const LIST_WAIT: Duration = Duration::from_secs(15);

/// `?limit=&after=` of a list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    /// Items in the page: 1 to 1000 (default 500).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The cursor the previous page named in its `x-next-after` header.
    #[param(max_length = 600)]
    after: Option<String>,
}

/// A checked page request, holding a list slot while it lives.
pub(super) struct Page {
    pub limit: usize,
    pub after: Option<String>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Page {
    /// The page `raw` asks for, once a list slot is free.
    pub async fn new(s: &ApiState, raw: RawQuery) -> ApiResult<Page> {
        let (limit, after) = parse(raw)?;
        let slot = Some(slot(s).await?);
        Ok(Page { limit, after, slot })
    }
}

/// One of the expensive requests' slots, waited for at most [`LIST_WAIT`].
pub(super) async fn slot(s: &ApiState) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    match tokio::time::timeout(LIST_WAIT, s.lists.clone().acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "{LIST_SLOTS} list requests are being served and this one waited {} s for \
                 its turn; retry shortly",
                LIST_WAIT.as_secs()
            ),
        )),
    }
}

fn parse(raw: RawQuery) -> ApiResult<(usize, Option<String>)> {
    check(query(raw)?)
}

/// A list's query string as the API reads it: the limit and cursor, or why not (the 400's
/// message).
pub fn read_query(raw: &str) -> Result<(usize, Option<String>), String> {
    parse(RawQuery(Some(raw.to_string()))).map_err(|e| e.message)
}

/// The limit and cursor of `q`, checked: a cursor is one or two names joined by `/`.
fn check(q: PageQuery) -> ApiResult<(usize, Option<String>)> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad(format!(
            "limit {limit}: a page holds 1 to {MAX_LIMIT} items"
        )));
    }
    if let Some(a) = &q.after {
        let parts: Vec<&str> = a.split('/').collect();
        if parts.len() > 2 || parts.iter().any(|p| Name::new(p).is_err()) {
            return Err(ApiError::bad(format!(
                "after {a:?} is not a cursor of this API: pass the value of the previous \
                 page's {NEXT} header"
            )));
        }
    }
    Ok((limit, q.after))
}

/// A page of a list and the cursor of the next one; it keeps the request's list slot until
/// it is encoded.
pub(super) struct Paged<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<T> Paged<T> {
    /// `items` as the page of `page`, with the cursor `next`.
    pub fn of(items: Vec<T>, next: Option<String>, page: Page) -> Paged<T> {
        Paged {
            items,
            next,
            _slot: page.slot,
        }
    }

    /// The items, taken out to be turned into others (see [`Paged::with`]).
    pub fn take(&mut self) -> Vec<T> {
        std::mem::take(&mut self.items)
    }

    /// This page (its cursor and slot) with `items` instead.
    pub fn with<U>(self, items: Vec<U>) -> Paged<U> {
        Paged {
            items,
            next: self.next,
            _slot: self._slot,
        }
    }
}

impl<T: Serialize> IntoResponse for Paged<T> {
    fn into_response(self) -> Response {
        let mut r = Json(self.items).into_response();
        if let Some(n) = self.next.and_then(|n| HeaderValue::from_str(&n).ok()) {
            r.headers_mut().insert(NEXT, n);
        }
        r
    }
}

/// A page of the readable records under `prefix`, in key order; cursors are keys less the
/// prefix.
pub(super) async fn stored<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: &str,
    page: Page,
) -> ApiResult<Paged<T>> {
    let after = page.after.as_ref().map(|a| format!("{prefix}{a}"));
    let (kvs, more) = store
        .list_page(prefix, after.as_deref(), page.limit)
        .await?;
    let next = more
        .then(|| kvs.last().map(|kv| kv.key[prefix.len()..].to_string()))
        .flatten();
    let mut items = Vec::with_capacity(kvs.len());
    for kv in kvs {
        match serde_json::from_slice(&kv.value) {
            Ok(v) => items.push(v),
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "skipping an unreadable record"),
        }
    }
    Ok(Paged::of(items, next, page))
}

/// Where an item of a history sits: its creation (RFC 3339) in milliseconds, then its id.
pub(super) fn history_key(created: &str, id: &Name) -> (i64, String) {
    let ms = created
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .unwrap_or(0);
    (ms, id.to_string())
}

/// A page of a whole (bounded) history, oldest first; cursors are `<milliseconds>.<id>`,
/// so a page goes on after its last item even once that item is gone.
pub(super) fn history<T>(
    mut items: Vec<T>,
    page: Page,
    key: impl Fn(&T) -> (i64, String),
) -> ApiResult<Paged<T>> {
    items.sort_by_cached_key(|i| key(i));
    let start = match &page.after {
        None => 0,
        Some(a) => {
            let cursor = a
                .split_once('.')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "after {a:?} is not a cursor of this list: pass the value of the \
                         previous page's {NEXT} header"
                    ))
                })?;
            items.partition_point(|i| key(i) <= cursor)
        }
    };
    let mut items: Vec<T> = items.into_iter().skip(start).collect();
    let next = if items.len() > page.limit {
        items.truncate(page.limit);
        items.last().map(|i| {
            let (ms, id) = key(i);
            format!("{ms}.{id}")
        })
    } else {
        None
    };
    Ok(Paged::of(items, next, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(limit: Option<usize>, after: Option<&str>) -> PageQuery {
        PageQuery {
            limit,
            after: after.map(String::from),
        }
    }

    #[test]
    fn limits_and_cursors_are_checked() {
        let cases: &[(Option<usize>, Option<&str>, bool)] = &[
            (None, None, true),
            (Some(1), None, true),
            (Some(MAX_LIMIT), None, true),
            (Some(0), None, false),
            (Some(MAX_LIMIT + 1), None, false),
            (None, Some("vm-1"), true),
            (None, Some("plan.0123456789ab/s1700000000000-00"), true),
            // A history's cursor: milliseconds, then the id.
            (
                None,
                Some("1780000000000.s1780000000000-0123456789abcdef"),
                true,
            ),
            (None, Some("1780000000000.web-20261202T015206Z"), true),
            (None, Some("a/b/c"), false),
            (None, Some("../etc"), false),
            (None, Some(""), false),
            (None, Some("a b"), false),
        ];
        for (limit, after, ok) in cases {
            assert_eq!(check(q(*limit, *after)).is_ok(), *ok, "{limit:?} {after:?}");
        }
    }

    #[test]
    fn a_history_pages_oldest_first_and_goes_on_past_a_removed_item() {
        let page = |after: Option<String>| Page {
            limit: 2,
            after,
            slot: None,
        };
        let item = |ms: i64, id: &str| (ms, id.to_string());
        let items = vec![item(30, "c"), item(10, "a"), item(20, "b"), item(20, "b2")];
        let key = |i: &(i64, String)| i.clone();
        let p1 = history(items.clone(), page(None), key).expect("page");
        assert_eq!(p1.items, vec![item(10, "a"), item(20, "b")]);
        assert_eq!(p1.next.as_deref(), Some("20.b"));
        // "b" is gone before the next page is asked for: the page still starts after it.
        let rest: Vec<_> = items.into_iter().filter(|i| i.1 != "b").collect();
        let p2 = history(rest, page(p1.next), key).expect("page");
        assert_eq!(p2.items, vec![item(20, "b2"), item(30, "c")]);
        assert_eq!(p2.next, None);
        assert!(history(vec![item(1, "a")], page(Some("x".into())), key).is_err());
    }
}
