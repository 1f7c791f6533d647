//! The configuration file as written (serde, `deny_unknown_fields` everywhere), before
//! validation: every value keeps its span, so an error can name its line and column.

use serde::Deserialize;
use toml::Spanned;

use super::{
    health::HealthTable,
    https::HttpsConfig,
    values::{DurationText, Whole, spanned_table_opt, spanned_tables, table_opt},
};

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a configuration file: [control], [[interface]], [firewall], [balancer], [[service]], [tls], [metrics], [export] and [flows] tables"
)]
pub(crate) struct RawConfig {
    #[serde(default, deserialize_with = "table_opt")]
    pub(crate) control: Option<RawControl>,
    #[serde(default, deserialize_with = "spanned_tables")]
    pub(crate) interface: Vec<Spanned<RawInterface>>,
    #[serde(default, deserialize_with = "table_opt")]
    pub(crate) firewall: Option<RawFirewall>,
    #[serde(default, deserialize_with = "table_opt")]
    pub(crate) balancer: Option<RawBalancer>,
    #[serde(default, deserialize_with = "spanned_tables")]
    pub(crate) service: Vec<Spanned<RawService>>,
    #[serde(default, deserialize_with = "spanned_table_opt")]
    pub(crate) tls: Option<Spanned<HttpsConfig>>,
    #[serde(default, deserialize_with = "table_opt")]
    pub(crate) metrics: Option<RawMetrics>,
    #[serde(default, deserialize_with = "table_opt")]
    pub(crate) export: Option<super::export::RawExport>,
    #[serde(default, deserialize_with = "table_opt")]
    pub(crate) flows: Option<super::flows::RawFlows>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [control] table (group)")]
pub(crate) struct RawControl {
    pub(crate) group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [[interface]] table (name, mode)")]
pub(crate) struct RawInterface {
    pub(crate) name: Spanned<String>,
    pub(crate) mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [firewall] table (default, malformed, deny, allow, except, [firewall.ports], [[firewall.limit]])"
)]
pub(crate) struct RawFirewall {
    pub(crate) default: Option<Spanned<String>>,
    pub(crate) malformed: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) except: Vec<Spanned<String>>,
    #[serde(default, deserialize_with = "table_opt")]
    pub(crate) ports: Option<RawPorts>,
    #[serde(default, deserialize_with = "spanned_tables")]
    pub(crate) limit: Vec<Spanned<super::ratelimit::RawLimit>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [firewall.ports] table (deny, allow)"
)]
pub(crate) struct RawPorts {
    #[serde(default)]
    pub(crate) deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [balancer] table (drain_timeout)")]
pub(crate) struct RawBalancer {
    pub(crate) drain_timeout: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[service]] table (address, mode, and its settings and backends)"
)]
pub(crate) struct RawService {
    pub(crate) address: Spanned<String>,
    pub(crate) mode: Spanned<String>,
    pub(crate) affinity: Option<Spanned<String>>,
    pub(crate) echo: Option<bool>,
    pub(crate) tcp_idle: Option<Spanned<DurationText>>,
    pub(crate) udp_idle: Option<Spanned<DurationText>>,
    pub(crate) snat: Option<Spanned<String>>,
    /// SYN-flood protection (config/synflood.rs).
    pub(crate) syn_protection: Option<Spanned<String>>,
    pub(crate) syn_threshold: Option<Spanned<Whole>>,
    /// Every backend down at once: "panic" (the default) or "strict".
    pub(crate) all_down: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "spanned_table_opt")]
    pub(crate) health: Option<Spanned<HealthTable>>,
    #[serde(default, deserialize_with = "spanned_tables")]
    pub(crate) backend: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[service.backend]] table (address, weight, backup)"
)]
pub(crate) struct RawBackend {
    pub(crate) address: Spanned<String>,
    pub(crate) weight: Option<Spanned<Whole>>,
    pub(crate) backup: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [metrics] table (listen)")]
pub(crate) struct RawMetrics {
    pub(crate) listen: Spanned<String>,
}
