//! Errors as Neutron reports them: an HTTP status and a body
//! `{"NeutronError": {"type": ..., "message": ..., "detail": ""}}`, whose
//! type names clients match on (`NetworkNotFound`, `IpAddressAlreadyAllocated`...).

use crate::store::StoreError;

/// A failed request: what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    pub status: u16,
    /// Neutron's exception name.
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    /// The same error under another of Neutron's type names.
    pub fn with_kind(mut self, kind: &'static str) -> ApiError {
        self.kind = kind;
        self
    }

    /// 400: the request is malformed or a value is invalid.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "HTTPBadRequest", message)
    }

    /// 400 with Neutron's type for a value that is not what it should be.
    pub fn invalid_input(message: impl Into<String>) -> ApiError {
        ApiError::new(
            400,
            "InvalidInput",
            format!("Invalid input for operation: {}.", message.into()),
        )
    }

    /// 404 for a resource of `kind` (`network`, `subnet`...).
    pub fn not_found(resource: &str, id: &str) -> ApiError {
        let kind = match resource {
            "network" => "NetworkNotFound",
            "subnet" => "SubnetNotFound",
            "port" => "PortNotFound",
            "router" => "RouterNotFound",
            "security_group" => "SecurityGroupNotFound",
            "security_group_rule" => "SecurityGroupRuleNotFound",
            "floatingip" => "FloatingIPNotFound",
            _ => "NotFound",
        };
        let what = match resource {
            "security_group" => "Security group",
            "security_group_rule" => "Security group rule",
            "floatingip" => "Floating IP",
            other => other,
        };
        let what = capitalized(what);
        ApiError::new(404, kind, format!("{what} {id} could not be found."))
    }

    /// 409: the request conflicts with the state of a resource.
    pub fn conflict(kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(409, kind, message)
    }

    /// The JSON body Neutron sends with it.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "NeutronError": {
                "type": self.kind,
                "message": self.message,
                "detail": "",
            }
        })
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::error!(%error, "store");
        match error {
            StoreError::Unavailable(_) => ApiError::new(
                503,
                "ServiceUnavailable",
                "The store is unavailable; try again.",
            ),
            StoreError::Backend(_) => {
                ApiError::new(500, "HTTPInternalServerError", error.to_string())
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_as_neutron_writes_it() {
        let error = ApiError::not_found("network", "n1");
        assert_eq!(error.status, 404);
        assert_eq!(
            error.body(),
            serde_json::json!({"NeutronError": {
                "type": "NetworkNotFound",
                "message": "Network n1 could not be found.",
                "detail": "",
            }})
        );
        assert_eq!(
            ApiError::not_found("security_group", "x").message,
            "Security group x could not be found."
        );
    }
}
