//! A list request's query string, as Neutron reads it: filters on any
//! attribute (`?name=web&name=db`: either), `fields=` to keep some
//! attributes only, `sort_key`/`sort_dir`, and `limit`/`marker` pages.
//! Applied to the resources' views, so a filter means what the client sees.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// (attribute, accepted values): a resource passes if, for every
    /// attribute, its value is one of those.
    filters: Vec<(String, Vec<String>)>,
    fields: Vec<String>,
    sort: Vec<(String, bool)>,
    limit: Option<usize>,
    marker: Option<String>,
    reverse: bool,
}

/// What a page of a list came to.
pub struct Page {
    pub items: Vec<Value>,
    /// The marker of the next page, if there may be one.
    pub next_marker: Option<String>,
}

impl ListQuery {
    pub fn parse(raw: Option<&str>) -> ApiResult<ListQuery> {
        let mut query = ListQuery::default();
        let mut sort_keys = Vec::new();
        let mut sort_dirs = Vec::new();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let value = value.into_owned();
            match key.as_ref() {
                "fields" => query.fields.push(value),
                "sort_key" => sort_keys.push(value),
                "sort_dir" => sort_dirs.push(match value.as_str() {
                    "asc" => true,
                    "desc" => false,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "{other} is an invalid value for sort_dir, valid values are 'asc' \
                             and 'desc'"
                        )));
                    }
                }),
                "limit" => {
                    let limit: usize = value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "Limit must be an integer 0 or greater and not '{value}'"
                        ))
                    })?;
                    // 0: no limit, as Neutron reads it.
                    query.limit = (limit > 0).then_some(limit);
                }
                "marker" => query.marker = Some(value),
                "page_reverse" => query.reverse = value.eq_ignore_ascii_case("true"),
                attribute => match query.filters.iter_mut().find(|(name, _)| name == attribute) {
                    Some((_, values)) => values.push(value),
                    None => query.filters.push((attribute.to_string(), vec![value])),
                },
            }
        }
        if sort_dirs.len() > sort_keys.len() {
            return Err(ApiError::bad_request(
                "The number of sort_keys and sort_dirs must be same",
            ));
        }
        query.sort = sort_keys
            .into_iter()
            .enumerate()
            .map(|(n, key)| (key, sort_dirs.get(n).copied().unwrap_or(true)))
            .collect();
        Ok(query)
    }

    /// The values a filter accepts for `name` (none without the filter).
    pub fn values(&self, name: &str) -> &[String] {
        self.filters
            .iter()
            .find(|(filter, _)| filter == name)
            .map_or(&[], |(_, values)| values.as_slice())
    }

    /// Whether a view passes the filters.
    pub fn matches(&self, view: &Value) -> bool {
        self.filters.iter().all(|(name, accepted)| {
            accepted
                .iter()
                .any(|wanted| matches_value(view.get(name), wanted))
        })
    }

    /// The views that pass, sorted and paged, with only the fields asked
    /// for. Views come in id order; that is the order without `sort_key`.
    pub fn apply(&self, mut views: Vec<Value>) -> Page {
        views.retain(|view| self.matches(view));
        if !self.sort.is_empty() {
            views.sort_by(|a, b| {
                self.sort
                    .iter()
                    .map(|(key, ascending)| {
                        let order = compare(a.get(key), b.get(key));
                        if *ascending { order } else { order.reverse() }
                    })
                    .find(|order| order.is_ne())
                    .unwrap_or(Ordering::Equal)
            });
        }
        if self.reverse {
            views.reverse();
        }
        if let Some(marker) = &self.marker
            && let Some(at) = views.iter().position(|view| view["id"] == marker.as_str())
        {
            views.drain(..=at);
        }
        let mut next_marker = None;
        if let Some(limit) = self.limit
            && views.len() > limit
        {
            views.truncate(limit);
            next_marker = views
                .last()
                .and_then(|view| view["id"].as_str())
                .map(String::from);
        }
        let items = views.into_iter().map(|view| self.select(view)).collect();
        Page { items, next_marker }
    }

    /// Only the fields asked for (all without `fields=`).
    pub fn select(&self, view: Value) -> Value {
        if self.fields.is_empty() {
            return view;
        }
        let Value::Object(map) = view else {
            return view;
        };
        Value::Object(
            map.into_iter()
                .filter(|(name, _)| self.fields.contains(name))
                .collect::<Map<_, _>>(),
        )
    }

    /// The query without its paging, for the link to the next page.
    pub fn next_link(&self, base: &str, marker: &str) -> String {
        let mut link = form_urlencoded::Serializer::new(String::new());
        for (name, values) in &self.filters {
            for value in values {
                link.append_pair(name, value);
            }
        }
        for field in &self.fields {
            link.append_pair("fields", field);
        }
        for (key, ascending) in &self.sort {
            link.append_pair("sort_key", key);
            link.append_pair("sort_dir", if *ascending { "asc" } else { "desc" });
        }
        if let Some(limit) = self.limit {
            link.append_pair("limit", &limit.to_string());
        }
        link.append_pair("marker", marker);
        format!("{base}?{}", link.finish())
    }
}

/// Whether an attribute's value is the one a filter names: strings as
/// they are, booleans and numbers as their text (`True` too, as the CLI
/// sends it), lists if any element matches (`security_groups=ID`), and
/// `fixed_ips=ip_address=…` / `subnet_id=…` as Neutron reads them.
fn matches_value(value: Option<&Value>, wanted: &str) -> bool {
    match value {
        None | Some(Value::Null) => wanted.is_empty() || wanted.eq_ignore_ascii_case("none"),
        Some(Value::String(text)) => text == wanted,
        Some(Value::Bool(flag)) => {
            wanted.eq_ignore_ascii_case(if *flag { "true" } else { "false" })
        }
        Some(Value::Number(number)) => number.to_string() == wanted,
        Some(Value::Array(items)) => items.iter().any(|item| match item {
            Value::Object(map) => wanted
                .split_once('=')
                .is_some_and(|(key, value)| map.get(key).and_then(Value::as_str) == Some(value)),
            other => matches_value(Some(other), wanted),
        }),
        Some(Value::Object(_)) => false,
    }
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(a)), Some(Value::Number(b))) => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(a)), Some(Value::String(b))) => a.cmp(b),
        (Some(Value::Bool(a)), Some(Value::Bool(b))) => a.cmp(b),
        (a, b) => a.is_some().cmp(&b.is_some()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn views() -> Vec<Value> {
        vec![
            json!({"id": "a", "name": "web", "admin_state_up": true, "mtu": 1450,
                   "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}]}),
            json!({"id": "b", "name": "db", "admin_state_up": false, "mtu": 1400, "fixed_ips": []}),
            json!({"id": "c", "name": "web", "admin_state_up": true, "mtu": 1300, "fixed_ips": []}),
        ]
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.items
            .iter()
            .map(|view| view["id"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn filters_match_what_the_client_sees() {
        let query = |text| ListQuery::parse(Some(text)).unwrap().apply(views());
        assert_eq!(ids(&query("name=web")), ["a", "c"]);
        assert_eq!(ids(&query("name=web&name=db")), ["a", "b", "c"]);
        assert_eq!(ids(&query("name=web&admin_state_up=True")), ["a", "c"]);
        assert_eq!(ids(&query("admin_state_up=false")), ["b"]);
        assert_eq!(ids(&query("mtu=1400")), ["b"]);
        assert_eq!(ids(&query("fixed_ips=ip_address%3D10.0.0.5")), ["a"]);
        assert!(ids(&query("name=none-such")).is_empty());
    }

    #[test]
    fn fields_sorting_and_pages() {
        let query = |text| ListQuery::parse(Some(text)).unwrap();
        let page = query("fields=id&fields=name").apply(views());
        assert_eq!(page.items[0], json!({"id": "a", "name": "web"}));
        let page = query("sort_key=mtu&sort_dir=asc").apply(views());
        assert_eq!(ids(&page), ["c", "b", "a"]);
        let page = query("sort_key=name&sort_dir=desc&sort_key=mtu").apply(views());
        assert_eq!(ids(&page), ["c", "a", "b"]);
        let first = query("limit=2").apply(views());
        assert_eq!(
            (ids(&first), first.next_marker.as_deref()),
            (vec!["a", "b"], Some("b"))
        );
        let second = query("limit=2&marker=b").apply(views());
        assert_eq!(
            (ids(&second), second.next_marker.as_deref()),
            (vec!["c"], None)
        );
        assert_eq!(
            query("limit=2&name=web").next_link("/v2.0/networks", "a"),
            "/v2.0/networks?name=web&limit=2&marker=a"
        );
        assert!(ListQuery::parse(Some("sort_dir=up")).is_err());
        assert!(ListQuery::parse(Some("limit=-1")).is_err());
    }
}
