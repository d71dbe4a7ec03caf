//! Reading a request body's attributes as Neutron does: each attribute
//! taken by name and type-checked, with a message that names it when it is
//! wrong, and those left over refused as unrecognized.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

/// The attributes of one resource in a request body.
pub struct Attrs {
    resource: &'static str,
    map: Map<String, Value>,
    taken: BTreeSet<String>,
}

/// The resource object under `key` of a body (`{"network": {...}}`).
pub fn resource(body: &Value, key: &'static str) -> ApiResult<Attrs> {
    match body.get(key) {
        Some(Value::Object(map)) => Ok(Attrs::new(key, map.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "Resource body {key} is not an object"
        ))),
        None => Err(ApiError::bad_request(format!(
            "Resource body required: {key}"
        ))),
    }
}

/// The resource objects of a bulk create (`{"ports": [...]}`), or the one
/// of a single create (`{"port": {...}}`).
pub fn one_or_many(
    body: &Value,
    key: &'static str,
    plural: &'static str,
) -> ApiResult<(Vec<Attrs>, bool)> {
    if let Some(items) = body.get(plural) {
        let Value::Array(items) = items else {
            return Err(ApiError::bad_request(format!("{plural} must be a list")));
        };
        if items.is_empty() {
            return Err(ApiError::bad_request(format!("{plural} must not be empty")));
        }
        let attrs = items
            .iter()
            .map(|item| match item {
                Value::Object(map) => Ok(Attrs::new(key, map.clone())),
                _ => Err(ApiError::bad_request(format!(
                    "each of {plural} must be an object"
                ))),
            })
            .collect::<ApiResult<_>>()?;
        return Ok((attrs, true));
    }
    Ok((vec![resource(body, key)?], false))
}

impl Attrs {
    pub fn new(resource: &'static str, map: Map<String, Value>) -> Attrs {
        Attrs {
            resource,
            map,
            taken: BTreeSet::new(),
        }
    }

    fn take(&mut self, name: &str) -> Option<&Value> {
        self.taken.insert(name.to_string());
        self.map.get(name).filter(|value| !value.is_null())
    }

    fn invalid(&self, name: &str, value: &Value, expected: &str) -> ApiError {
        ApiError::invalid_input(format!(
            "'{value}' is not {expected} (attribute {name} of {})",
            self.resource
        ))
    }

    /// Whether the body names the attribute (even as null).
    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn string(&mut self, name: &str) -> ApiResult<Option<String>> {
        match self.take(name).cloned() {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(self.invalid(name, &other, "a string")),
        }
    }

    /// A string that may be given as null: `None` absent, `Some(None)`
    /// null (`--gateway none` sends `"gateway_ip": null`).
    pub fn nullable_string(&mut self, name: &str) -> ApiResult<Option<Option<String>>> {
        if self.map.get(name) == Some(&Value::Null) {
            self.taken.insert(name.to_string());
            return Ok(Some(None));
        }
        Ok(self.string(name)?.map(Some))
    }

    /// A string of at most `max` characters (Neutron's name and
    /// description limit is 255).
    pub fn text(&mut self, name: &str, max: usize) -> ApiResult<Option<String>> {
        let text = self.string(name)?;
        if let Some(text) = &text
            && text.chars().count() > max
        {
            return Err(ApiError::invalid_input(format!(
                "'{text}' exceeds maximum length of {max}"
            )));
        }
        Ok(text)
    }

    pub fn bool(&mut self, name: &str) -> ApiResult<Option<bool>> {
        match self.take(name).cloned() {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(value)),
            // The CLI sends booleans as JSON booleans; Neutron also takes
            // their names as strings.
            Some(Value::String(text)) if text.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(text)) if text.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(other) => Err(self.invalid(name, &other, "a valid boolean")),
        }
    }

    pub fn integer(&mut self, name: &str) -> ApiResult<Option<i64>> {
        match self.take(name).cloned() {
            None => Ok(None),
            Some(Value::Number(number)) if number.is_i64() => Ok(number.as_i64()),
            Some(Value::String(text)) if text.parse::<i64>().is_ok() => Ok(text.parse().ok()),
            Some(other) => Err(self.invalid(name, &other, "an integer")),
        }
    }

    pub fn list(&mut self, name: &str) -> ApiResult<Option<Vec<Value>>> {
        match self.take(name).cloned() {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(self.invalid(name, &other, "a list")),
        }
    }

    pub fn object(&mut self, name: &str) -> ApiResult<Option<Map<String, Value>>> {
        match self.take(name).cloned() {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(self.invalid(name, &other, "a dictionary")),
        }
    }

    /// A list of strings.
    pub fn strings(&mut self, name: &str) -> ApiResult<Option<Vec<String>>> {
        let Some(items) = self.list(name)? else {
            return Ok(None);
        };
        items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                other => Err(self.invalid(name, &other, "a list of strings")),
            })
            .collect::<ApiResult<_>>()
            .map(Some)
    }

    /// Refuses the attributes in `names` (set by the server only).
    pub fn read_only(&mut self, names: &[&str]) -> ApiResult<()> {
        for name in names {
            if self.map.contains_key(*name) {
                return Err(ApiError::bad_request(format!(
                    "Attribute '{name}' not allowed in POST or PUT"
                )));
            }
            self.taken.insert(name.to_string());
        }
        Ok(())
    }

    /// Refuses what no reader took.
    pub fn finish(self) -> ApiResult<()> {
        let unknown: Vec<&str> = self
            .map
            .keys()
            .filter(|key| !self.taken.contains(*key))
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "Unrecognized attribute(s) '{}'",
                unknown.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn attributes_are_typed_and_leftovers_refused() {
        let body =
            json!({"network": {"name": "n", "admin_state_up": false, "mtu": "1450", "x": 1}});
        let mut attrs = resource(&body, "network").unwrap();
        assert_eq!(attrs.string("name").unwrap().as_deref(), Some("n"));
        assert_eq!(attrs.bool("admin_state_up").unwrap(), Some(false));
        assert_eq!(attrs.integer("mtu").unwrap(), Some(1450));
        assert_eq!(attrs.string("description").unwrap(), None);
        let error = attrs.finish().unwrap_err();
        assert_eq!(
            (error.status, error.message.as_str()),
            (400, "Unrecognized attribute(s) 'x'")
        );

        let mut attrs = resource(&json!({"network": {"name": 5}}), "network").unwrap();
        let error = attrs.string("name").unwrap_err();
        assert_eq!(error.kind, "InvalidInput");
        assert!(error.message.contains("name"), "{error}");
        assert!(resource(&json!({"subnet": {}}), "network").is_err());
        assert!(resource(&json!({"network": []}), "network").is_err());
    }

    #[test]
    fn bulk_bodies_are_lists_of_objects() {
        let (items, bulk) = one_or_many(
            &json!({"ports": [{"name": "a"}, {"name": "b"}]}),
            "port",
            "ports",
        )
        .unwrap();
        assert_eq!((items.len(), bulk), (2, true));
        let (items, bulk) = one_or_many(&json!({"port": {"name": "a"}}), "port", "ports").unwrap();
        assert_eq!((items.len(), bulk), (1, false));
        assert!(one_or_many(&json!({"ports": []}), "port", "ports").is_err());
        assert!(one_or_many(&json!({"ports": [1]}), "port", "ports").is_err());
    }
}
