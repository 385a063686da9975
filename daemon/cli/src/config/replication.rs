//! `[replication]`: a hot standby that follows the active instance through a changelog topic.

use super::*;

/// `[replication]`. Present on every instance of a deployment (the active one and its
/// standbys run the same configuration); which one is active is decided through Kafka.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicationConfig {
    /// The changelog topic (one partition, unlimited retention; created if missing).
    /// Default: `<kafka.group_id>.changelog`.
    #[serde(default)]
    pub topic: Option<String>,
    /// The consumer group whose member holding the changelog is the active instance.
    /// Default: `<kafka.group_id>.replication`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// The active instance's transactional id, the same on every instance: a new active
    /// instance fences the old one through it. Default: `<kafka.group_id>.active`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// This instance's name in logs and `/v1/replication`. Default: the host name.
    #[serde(default)]
    pub instance: Option<String>,
    /// How long after the active instance's last heartbeat a standby takes over (at least
    /// the broker's `group.min.session.timeout.ms`, 6 s by default).
    #[serde(default = "default_session_timeout", with = "crate::config::duration")]
    pub session_timeout: Duration,
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ReplicationConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("topic", &self.topic),
            ("group_id", &self.group_id),
            ("transactional_id", &self.transactional_id),
            ("instance", &self.instance),
        ] {
            if value
                .as_deref()
                .is_some_and(|value| value.trim().is_empty())
            {
                return Err(format!(
                    "key `replication.{key}` is empty: remove it for the default, or give a name"
                ));
            }
        }
        if self.session_timeout < Duration::from_secs(1)
            || self.session_timeout > Duration::from_secs(300)
        {
            return Err(
                "key `replication.session_timeout` must be between 1s and 5m, e.g. \"10s\""
                    .to_owned(),
            );
        }
        Ok(())
    }
}

impl Config {
    /// Replication's settings, when `[replication]` is configured.
    pub fn replication_settings(&self) -> Option<tandem_replica::ReplicationSettings> {
        let replication = self.replication.as_ref()?;
        let group = &self.kafka.group_id;
        let properties = self
            .kafka
            .all_properties()
            .into_iter()
            .filter(|(key, _)| !tandem_ingest::CONSUMER_ONLY_PROPERTIES.contains(&key.as_str()))
            .collect();
        Some(tandem_replica::ReplicationSettings {
            brokers: self.kafka.brokers.clone(),
            properties,
            topic: replication
                .topic
                .clone()
                .unwrap_or_else(|| format!("{group}.changelog")),
            group_id: replication
                .group_id
                .clone()
                .unwrap_or_else(|| format!("{group}.replication")),
            transactional_id: replication
                .transactional_id
                .clone()
                .unwrap_or_else(|| format!("{group}.active")),
            instance: replication.instance.clone().unwrap_or_else(host_name),
            session_timeout: replication.session_timeout,
        })
    }
}

/// The machine's host name (a pod's name on Kubernetes).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()))
}
