//! The resources the controller keeps, as stored (typed, validated), and
//! as Neutron shows them (`view`). Pure: no store, no HTTP.

pub mod agent;
pub mod floating_ip;
pub mod network;
pub mod port;
pub mod router;
pub mod security_group;
pub mod subnet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use floating_ip::FloatingIp;
pub use network::Network;
pub use port::Port;
pub use router::Router;
pub use security_group::SecurityGroup;
pub use subnet::Subnet;

/// What every Neutron resource has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Grows by one with every change (Neutron's `revision_number`,
    /// checked by `If-Match`).
    pub revision_number: u64,
}

impl Meta {
    /// A new resource's: a fresh id, created now, revision 1... Neutron
    /// starts at 0 and counts the create's own updates; clients only
    /// compare revisions, so 1 serves.
    pub fn new(name: String, description: String, project_id: String) -> Meta {
        let now = now();
        Meta {
            id: uuid::Uuid::new_v4().to_string(),
            name,
            description,
            project_id,
            tags: Vec::new(),
            created_at: now.clone(),
            updated_at: now,
            revision_number: 1,
        }
    }

    /// Marks a change: updated now, one revision more.
    pub fn touch(&mut self) {
        self.updated_at = now();
        self.revision_number += 1;
    }

    /// A view: the attributes every resource shows, then the kind's own
    /// (`rest`, a JSON object).
    fn view_with(&self, rest: Value) -> Value {
        let mut view = self.view();
        if let Value::Object(rest) = rest {
            view.extend(rest);
        }
        Value::Object(view)
    }

    /// A view of a resource that has no name (a rule, a floating IP).
    fn unnamed_view_with(&self, rest: Value) -> Value {
        let mut view = self.view_with(rest);
        if let Value::Object(map) = &mut view {
            map.remove("name");
        }
        view
    }

    /// The attributes every view shows.
    fn view(&self) -> serde_json::Map<String, Value> {
        let Value::Object(map) = json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "tags": self.tags,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "revision_number": self.revision_number,
        }) else {
            unreachable!("a JSON object literal")
        };
        map
    }
}

/// Now, as Neutron writes times: `2026-12-07T15:13:42Z`.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// A resource the store keeps under its kind's prefix.
pub trait Resource: Serialize + for<'de> Deserialize<'de> + Clone + Send + Sync + 'static {
    /// The singular name in URLs' bodies and errors (`network`).
    const KIND: &'static str;
    fn meta(&self) -> &Meta;
    /// As Neutron shows it.
    fn view(&self) -> Value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_neutrons() {
        let now = now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    }

    #[test]
    fn a_change_moves_the_revision() {
        let mut meta = Meta::new("n".into(), String::new(), "p".into());
        assert_eq!(meta.revision_number, 1);
        meta.touch();
        assert_eq!(meta.revision_number, 2);
        assert_eq!(meta.view()["tenant_id"], "p");
    }
}
