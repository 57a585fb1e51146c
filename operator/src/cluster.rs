//! A Cluster's desired objects: pure functions of the Cluster object.
//!
//! The reconciler applies what these return with server-side apply; tests
//! check them directly, and `tributary-operator render-cluster` prints them
//! so the chart tests can validate them against the Kubernetes schemas.
//!
//! The brokers run as one StatefulSet: the pod ordinal is the broker's node
//! id, read from the `apps.kubernetes.io/pod-index` label through the
//! downward API and passed as `--node-id $(TRIBUTARY_NODE_ID)` (Kubernetes
//! expands `$(VAR)` in args, so no shell wrapper is needed). Each broker
//! advertises its stable DNS name under the headless Service. The update
//! strategy is `OnDelete`: brokers are restarted by the operator one at a
//! time, only when no partition would become under-replicated, rather than
//! by the StatefulSet controller.
//!
//! Every broker finds the others through `--peers`, built from the
//! headless Service's stable pod names (`ID@<pod>.<headless>.<ns>.svc:PORT`),
//! and the first three ordinals are the Raft voters (`--controllers`). Both
//! are only read when a broker's data directory is empty, and they change
//! with the broker count, so they reach the broker as environment variables
//! from the ConfigMap (keys [`PEERS_KEY`], [`CONTROLLERS_KEY`]) rather than
//! in the pod template: a scale-up does not restart the running brokers.
//!
//! With `spec.rack.topologyKey`, an init container (`tributary-operator
//! rack-init`, same image) reads that label of the pod's node, which the
//! downward API cannot, and writes `rack = "..."` ahead of the ConfigMap's
//! `broker.toml` into an emptyDir the broker reads its config from. It needs
//! `get` on nodes: the Helm chart adds a ClusterRole and the service account
//! [`RACK_SERVICE_ACCOUNT`] only when rack awareness is enabled there.
//!
//! How many brokers the StatefulSet runs is decided by
//! [`crate::scale::plan_scale`] (a scale-down drains first), not copied from
//! `spec.replicas`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecurityContext,
    Service, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::core::v1::{Capabilities, ConfigMapKeySelector, EmptyDirVolumeSource};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use tributary_crds::Cluster;

use crate::labels::{
    client_service_name, common_labels, config_map_name, headless_service_name, selector_labels,
    CONFIG_HASH_ANNOTATION, POD_INDEX_LABEL,
};

/// Where the broker keeps its data inside the container.
pub const DATA_DIR: &str = "/var/lib/tributary";
/// Where `broker.toml` is mounted.
pub const CONFIG_DIR: &str = "/etc/tributary";
/// The broker config file name inside the ConfigMap.
pub const CONFIG_FILE: &str = "broker.toml";
/// The image repository used when a Cluster names no image.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "tributary/tributary";
/// UID/GID the broker runs as (the image's `tributary` user).
pub const BROKER_UID: i64 = 10001;

/// ConfigMap key holding `--peers` (read by the broker as `TRIBUTARY_PEERS`).
pub const PEERS_KEY: &str = "peers";
/// ConfigMap key holding `--controllers` (`TRIBUTARY_CONTROLLERS`).
pub const CONTROLLERS_KEY: &str = "controllers";
/// How many of the lowest ordinals are Raft voters.
pub const VOTERS: i32 = 3;
/// Where the rack init step writes the broker's config.
pub const RUNTIME_DIR: &str = "/var/run/tributary";
/// Service account for broker pods of rack-aware Clusters that name none
/// (the Helm chart's `rackAwareness` creates it with `get` on nodes).
pub const RACK_SERVICE_ACCOUNT: &str = "tributary-broker";

/// `--peers` for `replicas` brokers of Cluster `name` in `namespace`.
pub fn peers(name: &str, namespace: &str, replicas: i32, grpc_port: i32) -> String {
    (0..replicas.max(1))
        .map(|i| format!("{i}@{name}-{i}.{}.{namespace}.svc:{grpc_port}", headless_service_name(name)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `--controllers`: the lowest ordinals, up to [`VOTERS`].
pub fn controllers(replicas: i32) -> String {
    (0..replicas.clamp(1, VOTERS)).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// What the operator was started with that shapes generated objects.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Image repository for Clusters that name no image.
    pub image_repository: String,
    /// Tag for Clusters that name neither image nor version.
    pub image_tag: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            image_repository: DEFAULT_IMAGE_REPOSITORY.into(),
            image_tag: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Why a Cluster cannot be turned into objects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DesiredError {
    #[error("the Cluster has no {0} (objects read from the API server always have one)")]
    MissingMetadata(&'static str),
    #[error("cannot write broker.toml: {0}")]
    Config(String),
}

/// Everything the operator applies for one Cluster, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredCluster {
    /// How many brokers the StatefulSet runs.
    pub replicas: i32,
    pub config_map: ConfigMap,
    pub headless_service: Service,
    pub client_service: Service,
    pub stateful_set: StatefulSet,
    pub pod_disruption_budget: PodDisruptionBudget,
}

impl DesiredCluster {
    /// The objects as JSON values, in apply order (for printing and tests).
    pub fn to_values(&self) -> serde_json::Result<Vec<serde_json::Value>> {
        Ok(vec![
            typed_value(&self.config_map)?,
            typed_value(&self.headless_service)?,
            typed_value(&self.client_service)?,
            typed_value(&self.stateful_set)?,
            typed_value(&self.pod_disruption_budget)?,
        ])
    }
}

/// A k8s-openapi object as JSON with its `apiVersion` and `kind`.
fn typed_value<K: k8s_openapi::Resource + serde::Serialize>(
    obj: &K,
) -> serde_json::Result<serde_json::Value> {
    let mut v = serde_json::to_value(obj)?;
    if let Some(map) = v.as_object_mut() {
        map.insert("apiVersion".into(), K::API_VERSION.into());
        map.insert("kind".into(), K::KIND.into());
    }
    Ok(v)
}

/// The image a Cluster's brokers run.
pub fn image(cluster: &Cluster, defaults: &Defaults) -> String {
    match (&cluster.spec.image, &cluster.spec.version) {
        (Some(image), _) => image.clone(),
        (None, Some(version)) => format!("{}:{version}", defaults.image_repository),
        (None, None) => format!("{}:{}", defaults.image_repository, defaults.image_tag),
    }
}

/// Builds every object for `cluster`, its StatefulSet running `replicas`
/// brokers (what [`crate::scale::plan_scale`] decided).
pub fn desired(
    cluster: &Cluster,
    defaults: &Defaults,
    replicas: i32,
) -> Result<DesiredCluster, DesiredError> {
    let name = cluster.metadata.name.as_deref().ok_or(DesiredError::MissingMetadata("name"))?;
    let namespace =
        cluster.metadata.namespace.as_deref().ok_or(DesiredError::MissingMetadata("namespace"))?;
    let owner = cluster.controller_owner_ref(&()).ok_or(DesiredError::MissingMetadata("uid"))?;
    let config = broker_toml(cluster)?;
    let ctx =
        Ctx { cluster, name, namespace, owner, labels: common_labels(name, cluster.spec.tier.as_str()) };
    Ok(DesiredCluster {
        stateful_set: ctx.stateful_set(&image(cluster, defaults), &config, replicas),
        replicas,
        config_map: ctx.config_map(&config, replicas),
        headless_service: ctx.headless_service(),
        client_service: ctx.client_service(),
        pod_disruption_budget: ctx.pod_disruption_budget(),
    })
}

/// The broker's TOML config: broker-wide settings and topic defaults. Flags
/// given on the command line (data dir, listeners, node id) are not here.
pub fn broker_toml(cluster: &Cluster) -> Result<String, DesiredError> {
    let mut table = toml::Table::new();
    if let Some(b) = &cluster.spec.broker {
        let settings = [
            ("retention_check_interval_ms", b.retention_check_interval_ms),
            ("cleaner_interval_ms", b.cleaner_interval_ms),
            ("block_cache_bytes", b.block_cache_bytes),
            ("write_buffer_bytes", b.write_buffer_bytes),
        ];
        for (key, value) in settings {
            if let Some(v) = value {
                table.insert(key.into(), toml::Value::Integer(v));
            }
        }
    }
    if !cluster.spec.topic_defaults.is_empty() {
        let defaults: toml::Table = cluster
            .spec
            .topic_defaults
            .iter()
            .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
            .collect();
        table.insert("topic_defaults".into(), toml::Value::Table(defaults));
    }
    let body = toml::to_string(&table).map_err(|e| DesiredError::Config(e.to_string()))?;
    Ok(format!("# Generated by tributary-operator from this Cluster's spec; edits are overwritten.\n{body}"))
}

/// FNV-1a, 64 bits: a stable, dependency-free fingerprint of the config.
pub fn fingerprint(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The container security context of every generated container.
fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        ..SecurityContext::default()
    }
}

struct Ctx<'a> {
    cluster: &'a Cluster,
    name: &'a str,
    namespace: &'a str,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
}

impl Ctx<'_> {
    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_string()),
            labels: Some(self.labels.clone()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn selector(&self) -> LabelSelector {
        LabelSelector { match_labels: Some(selector_labels(self.name)), ..LabelSelector::default() }
    }

    fn grpc_port(&self) -> i32 {
        self.cluster.spec.listeners.grpc_port
    }

    fn http_port(&self) -> i32 {
        self.cluster.spec.listeners.http_port
    }

    fn kafka_port(&self) -> i32 {
        self.cluster.spec.listeners.kafka_port
    }

    fn service_ports(&self) -> Vec<ServicePort> {
        vec![
            ServicePort {
                name: Some("grpc".into()),
                port: self.grpc_port(),
                target_port: Some(IntOrString::String("grpc".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("kubernetes.io/h2c".into()),
                ..ServicePort::default()
            },
            ServicePort {
                name: Some("http".into()),
                port: self.http_port(),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..ServicePort::default()
            },
            ServicePort {
                name: Some("kafka".into()),
                port: self.kafka_port(),
                target_port: Some(IntOrString::String("kafka".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            },
        ]
    }

    fn config_map(&self, config: &str, replicas: i32) -> ConfigMap {
        ConfigMap {
            metadata: self.meta(config_map_name(self.name)),
            data: Some(BTreeMap::from([
                (CONFIG_FILE.to_string(), config.to_string()),
                (PEERS_KEY.to_string(), peers(self.name, self.namespace, replicas, self.grpc_port())),
                (CONTROLLERS_KEY.to_string(), controllers(replicas)),
            ])),
            ..ConfigMap::default()
        }
    }

    /// Stable per-broker DNS names for peers, including not-yet-ready
    /// brokers (a starting broker must be reachable to join the quorum).
    fn headless_service(&self) -> Service {
        Service {
            metadata: self.meta(headless_service_name(self.name)),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                publish_not_ready_addresses: Some(true),
                selector: Some(selector_labels(self.name)),
                ports: Some(self.service_ports()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// The bootstrap address for clients: ready brokers only.
    fn client_service(&self) -> Service {
        Service {
            metadata: self.meta(client_service_name(self.name)),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(selector_labels(self.name)),
                ports: Some(self.service_ports()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn pod_disruption_budget(&self) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: self.meta(client_service_name(self.name)),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(self.selector()),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }
    }

    fn env(&self) -> Vec<EnvVar> {
        let field = |path: &str| EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        };
        let mut env = vec![
            EnvVar {
                name: "TRIBUTARY_NODE_ID".into(),
                value_from: Some(field(&format!("metadata.labels['{POD_INDEX_LABEL}']"))),
                ..EnvVar::default()
            },
            EnvVar { name: "POD_NAME".into(), value_from: Some(field("metadata.name")), ..EnvVar::default() },
            EnvVar {
                name: "POD_NAMESPACE".into(),
                value_from: Some(field("metadata.namespace")),
                ..EnvVar::default()
            },
            self.config_env("TRIBUTARY_PEERS", PEERS_KEY),
            self.config_env("TRIBUTARY_CONTROLLERS", CONTROLLERS_KEY),
        ];
        let obs = &self.cluster.spec.observability;
        if let Some(level) = &obs.log_level {
            env.push(EnvVar { name: "RUST_LOG".into(), value: Some(level.clone()), ..EnvVar::default() });
        }
        if let Some(endpoint) = &obs.otlp_endpoint {
            env.push(EnvVar {
                name: "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                value: Some(endpoint.clone()),
                ..EnvVar::default()
            });
            env.push(EnvVar {
                name: "OTEL_SERVICE_NAME".into(),
                value: Some("tributary-broker".into()),
                ..EnvVar::default()
            });
        }
        env
    }

    /// An environment variable read from a ConfigMap key at container start.
    fn config_env(&self, name: &str, key: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: config_map_name(self.name),
                    key: key.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }
    }

    /// Where the broker reads its config: the ConfigMap, or the copy the
    /// rack init step wrote with `rack` added.
    fn config_path(&self) -> String {
        match self.cluster.spec.rack {
            Some(_) => format!("{RUNTIME_DIR}/{CONFIG_FILE}"),
            None => format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        }
    }

    /// The init step that turns the node's topology label into `rack`.
    fn rack_init_container(&self, image: &str) -> Option<Container> {
        let rack = self.cluster.spec.rack.as_ref()?;
        Some(Container {
            name: "rack".into(),
            image: Some(image.into()),
            image_pull_policy: self.cluster.spec.image_pull_policy.map(|p| p.as_str().into()),
            command: Some(vec!["tributary-operator".into()]),
            args: Some(vec![
                "rack-init".into(),
                "--node".into(),
                "$(NODE_NAME)".into(),
                "--topology-key".into(),
                rack.topology_key.clone(),
                "--config-in".into(),
                format!("{CONFIG_DIR}/{CONFIG_FILE}"),
                "--config-out".into(),
                format!("{RUNTIME_DIR}/{CONFIG_FILE}"),
            ]),
            env: Some(vec![EnvVar {
                name: "NODE_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "spec.nodeName".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            }]),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "config".into(),
                    mount_path: CONFIG_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "runtime".into(),
                    mount_path: RUNTIME_DIR.into(),
                    ..VolumeMount::default()
                },
            ]),
            security_context: Some(restricted()),
            ..Container::default()
        })
    }

    fn args(&self) -> Vec<String> {
        // Each pod by its stable DNS name: clients (and Kafka clients,
        // which connect to every broker Metadata names) reach it directly.
        let pod = |port: i32| {
            format!("$(POD_NAME).{}.$(POD_NAMESPACE).svc:{port}", headless_service_name(self.name))
        };
        vec![
            "--config".into(),
            self.config_path(),
            "--data-dir".into(),
            DATA_DIR.into(),
            "--listen".into(),
            format!("0.0.0.0:{}", self.grpc_port()),
            "--http-listen".into(),
            format!("0.0.0.0:{}", self.http_port()),
            "--node-id".into(),
            "$(TRIBUTARY_NODE_ID)".into(),
            "--advertised-address".into(),
            pod(self.grpc_port()),
            "--kafka-listen".into(),
            format!("0.0.0.0:{}", self.kafka_port()),
            "--kafka-advertised-address".into(),
            pod(self.kafka_port()),
            "--cluster-name".into(),
            self.name.to_string(),
        ]
    }

    fn broker_container(&self, image: &str) -> Container {
        let probe = |path: &str, period: i32, failures: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::String("http".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            timeout_seconds: Some(3),
            ..Probe::default()
        };
        Container {
            name: "broker".into(),
            image: Some(image.into()),
            image_pull_policy: self.cluster.spec.image_pull_policy.map(|p| p.as_str().into()),
            command: Some(vec!["tributary-broker".into()]),
            args: Some(self.args()),
            env: Some(self.env()),
            ports: Some(vec![
                ContainerPort {
                    name: Some("grpc".into()),
                    container_port: self.grpc_port(),
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                },
                ContainerPort {
                    name: Some("http".into()),
                    container_port: self.http_port(),
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                },
                ContainerPort {
                    name: Some("kafka".into()),
                    container_port: self.kafka_port(),
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                },
            ]),
            // Recovery scans the tail of every active segment: give a
            // starting broker up to ten minutes before liveness applies.
            startup_probe: Some(probe("/healthz", 5, 120)),
            liveness_probe: Some(probe("/healthz", 10, 3)),
            readiness_probe: Some(probe("/readyz", 5, 2)),
            resources: self.cluster.spec.resources.clone(),
            volume_mounts: Some(self.broker_mounts()),
            security_context: Some(restricted()),
            ..Container::default()
        }
    }

    fn broker_mounts(&self) -> Vec<VolumeMount> {
        let mut mounts = vec![
            VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..VolumeMount::default() },
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ];
        if self.cluster.spec.rack.is_some() {
            mounts.push(VolumeMount {
                name: "runtime".into(),
                mount_path: RUNTIME_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        mounts
    }

    fn volumes(&self) -> Vec<Volume> {
        let mut volumes = vec![Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(self.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }];
        if self.cluster.spec.rack.is_some() {
            volumes.push(Volume {
                name: "runtime".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
        }
        volumes
    }

    /// Prefer one broker per node unless the user chose an affinity.
    fn affinity(&self) -> Affinity {
        if let Some(a) = self.cluster.spec.pod_template.as_ref().and_then(|p| p.affinity.clone()) {
            return a;
        }
        Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(self.selector()),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                }]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }
    }

    fn pod_template(&self, image: &str, config: &str) -> PodTemplateSpec {
        let overrides = self.cluster.spec.pod_template.clone().unwrap_or_default();
        let mut labels = overrides.labels;
        labels.extend(self.labels.clone());
        let mut annotations = overrides.annotations;
        annotations.insert(CONFIG_HASH_ANNOTATION.into(), fingerprint(config));
        if self.cluster.spec.observability.metrics_annotations {
            annotations.insert("prometheus.io/scrape".into(), "true".into());
            annotations.insert("prometheus.io/port".into(), self.http_port().to_string());
            annotations.insert("prometheus.io/path".into(), "/metrics".into());
        }
        let spread = self.cluster.spec.rack.as_ref().map(|r| {
            vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: r.topology_key.clone(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(self.selector()),
                ..TopologySpreadConstraint::default()
            }]
        });
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                init_containers: self.rack_init_container(image).map(|c| vec![c]),
                containers: vec![self.broker_container(image)],
                // The rack init step reads the node: it needs the chart's
                // service account with `get` on nodes.
                service_account_name: overrides
                    .service_account_name
                    .or_else(|| self.cluster.spec.rack.as_ref().map(|_| RACK_SERVICE_ACCOUNT.to_string())),
                // The broker fsyncs and closes every log on SIGTERM.
                termination_grace_period_seconds: Some(60),
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(BROKER_UID),
                    run_as_group: Some(BROKER_UID),
                    fs_group: Some(BROKER_UID),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        ..SeccompProfile::default()
                    }),
                    ..PodSecurityContext::default()
                }),
                affinity: Some(self.affinity()),
                topology_spread_constraints: spread,
                tolerations: (!overrides.tolerations.is_empty()).then_some(overrides.tolerations),
                node_selector: (!overrides.node_selector.is_empty()).then_some(overrides.node_selector),
                priority_class_name: overrides.priority_class_name,
                volumes: Some(self.volumes()),
                ..PodSpec::default()
            }),
        }
    }

    fn volume_claim_template(&self) -> PersistentVolumeClaim {
        let storage = &self.cluster.spec.storage;
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                labels: Some(self.labels.clone()),
                annotations: (!storage.annotations.is_empty()).then(|| storage.annotations.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), Quantity(storage.size.clone()))])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }
    }

    fn stateful_set(&self, image: &str, config: &str, replicas: i32) -> StatefulSet {
        StatefulSet {
            metadata: self.meta(client_service_name(self.name)),
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some(headless_service_name(self.name)),
                selector: self.selector(),
                // Brokers find each other to form the metadata quorum: start
                // them together rather than one after another.
                pod_management_policy: Some("Parallel".into()),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("OnDelete".into()),
                    ..StatefulSetUpdateStrategy::default()
                }),
                template: self.pod_template(image, config),
                volume_claim_templates: Some(vec![self.volume_claim_template()]),
                // A scale-down only shrinks after the broker was drained and
                // removed; its claim then goes or stays as the Cluster says.
                persistent_volume_claim_retention_policy: Some(
                    StatefulSetPersistentVolumeClaimRetentionPolicy {
                        when_scaled: Some(
                            if self.cluster.spec.storage.delete_claims_on_scale_down {
                                "Delete"
                            } else {
                                "Retain"
                            }
                            .into(),
                        ),
                        when_deleted: Some("Retain".into()),
                    },
                ),
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_crds::cluster::{BrokerSettings, PodOverrides, RackAwareness, Tier};
    use tributary_crds::ClusterSpec;

    fn cluster(spec: ClusterSpec) -> Cluster {
        let mut c = Cluster::new("events", spec);
        c.metadata.namespace = Some("prod".into());
        c.metadata.uid = Some("0b7e6c1e-0000-4000-8000-000000000001".into());
        c
    }

    fn build(spec: ClusterSpec) -> DesiredCluster {
        let replicas = spec.replicas;
        desired(&cluster(spec), &Defaults::default(), replicas).expect("desired objects")
    }

    fn pod_spec(d: &DesiredCluster) -> &PodSpec {
        d.stateful_set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod spec")
    }

    #[test]
    fn names_owners_and_labels() {
        let d = build(ClusterSpec::default());
        let metas = [
            &d.config_map.metadata,
            &d.headless_service.metadata,
            &d.client_service.metadata,
            &d.stateful_set.metadata,
            &d.pod_disruption_budget.metadata,
        ];
        let names: Vec<_> = metas.iter().map(|m| m.name.as_deref().unwrap_or_default()).collect();
        assert_eq!(names, ["events-config", "events-brokers", "events", "events", "events"]);
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("prod"));
            let owners = m.owner_references.as_ref().expect("owner");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "Cluster");
            assert_eq!(owners[0].api_version, "tributary.dev/v1alpha1");
            assert_eq!(owners[0].name, "events");
            assert_eq!(owners[0].controller, Some(true));
            let labels = m.labels.as_ref().expect("labels");
            assert_eq!(labels.get("tributary.dev/cluster").map(String::as_str), Some("events"));
            assert_eq!(labels.get("tributary.dev/tier").map(String::as_str), Some("local"));
        }
    }

    #[test]
    fn missing_uid_is_an_error_not_a_panic() {
        let mut c = cluster(ClusterSpec::default());
        c.metadata.uid = None;
        assert_eq!(desired(&c, &Defaults::default(), 1), Err(DesiredError::MissingMetadata("uid")));
        c.metadata.namespace = None;
        assert_eq!(desired(&c, &Defaults::default(), 1), Err(DesiredError::MissingMetadata("namespace")));
    }

    #[test]
    fn broker_command_and_args_are_explicit() {
        let d = build(ClusterSpec::default());
        let c = &pod_spec(&d).containers[0];
        assert_eq!(c.command.as_deref(), Some(&["tributary-broker".to_string()][..]));
        let args = c.args.as_ref().expect("args").join(" ");
        assert_eq!(
            args,
            "--config /etc/tributary/broker.toml --data-dir /var/lib/tributary --listen 0.0.0.0:7070 \
             --http-listen 0.0.0.0:7071 --node-id $(TRIBUTARY_NODE_ID) \
             --advertised-address $(POD_NAME).events-brokers.$(POD_NAMESPACE).svc:7070 \
             --kafka-listen 0.0.0.0:9092 --kafka-advertised-address \
             $(POD_NAME).events-brokers.$(POD_NAMESPACE).svc:9092 --cluster-name events"
        );
        // $(VAR) in args only expands for variables defined on the container.
        let env = c.env.as_ref().expect("env");
        let node_id = env.iter().find(|e| e.name == "TRIBUTARY_NODE_ID").expect("node id env");
        let path =
            node_id.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
        assert_eq!(path, Some("metadata.labels['apps.kubernetes.io/pod-index']"));
        assert!(env.iter().any(|e| e.name == "POD_NAME") && env.iter().any(|e| e.name == "POD_NAMESPACE"));
        assert_eq!(c.image.as_deref(), Some(&*format!("tributary/tributary:{}", env!("CARGO_PKG_VERSION"))));
    }

    #[test]
    fn probes_use_the_http_port() {
        let d = build(ClusterSpec::default());
        let c = &pod_spec(&d).containers[0];
        let path = |p: &Option<Probe>| {
            let g = p.as_ref().and_then(|p| p.http_get.as_ref()).expect("httpGet");
            (g.path.clone().unwrap_or_default(), g.port.clone())
        };
        let http = IntOrString::String("http".into());
        assert_eq!(path(&c.readiness_probe), ("/readyz".into(), http.clone()));
        assert_eq!(path(&c.liveness_probe), ("/healthz".into(), http.clone()));
        assert_eq!(path(&c.startup_probe), ("/healthz".into(), http));
        let ports: Vec<_> = c.ports.iter().flatten().map(|p| (p.name.clone(), p.container_port)).collect();
        assert_eq!(
            ports,
            [(Some("grpc".into()), 7070), (Some("http".into()), 7071), (Some("kafka".into()), 9092)]
        );
    }

    #[test]
    fn stateful_set_shape() {
        let mut spec = ClusterSpec { replicas: 1, ..ClusterSpec::default() };
        spec.storage.size = "200Gi".into();
        spec.storage.storage_class_name = Some("fast".into());
        spec.storage.annotations.insert("argocd.argoproj.io/sync-options".into(), "Prune=false".into());
        let d = build(spec);
        let s = d.stateful_set.spec.as_ref().expect("spec");
        assert_eq!(s.replicas, Some(1));
        assert_eq!(d.replicas, 1);
        let retention = s.persistent_volume_claim_retention_policy.as_ref().expect("retention");
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"), "claims are kept by default");
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(s.service_name.as_deref(), Some("events-brokers"));
        assert_eq!(s.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(s.update_strategy.as_ref().and_then(|u| u.type_.as_deref()), Some("OnDelete"));
        assert_eq!(s.selector.match_labels, Some(selector_labels("events")));
        // The template's labels must satisfy the selector.
        let tl = s.template.metadata.as_ref().and_then(|m| m.labels.as_ref()).expect("labels");
        for (k, v) in selector_labels("events") {
            assert_eq!(tl.get(&k), Some(&v));
        }
        let pvc = &s.volume_claim_templates.as_ref().expect("vct")[0];
        assert_eq!(pvc.metadata.name.as_deref(), Some("data"));
        let pvc_annotations = pvc.metadata.annotations.as_ref().expect("pvc annotations");
        assert_eq!(
            pvc_annotations.get("argocd.argoproj.io/sync-options").map(String::as_str),
            Some("Prune=false")
        );
        let ps = pvc.spec.as_ref().expect("pvc spec");
        assert_eq!(ps.storage_class_name.as_deref(), Some("fast"));
        let req = ps.resources.as_ref().and_then(|r| r.requests.as_ref()).expect("requests");
        assert_eq!(req.get("storage"), Some(&Quantity("200Gi".into())));
        let mounts = pod_spec(&d).containers[0].volume_mounts.clone().unwrap_or_default();
        assert!(mounts.iter().any(|m| m.name == "data" && m.mount_path == DATA_DIR));
    }

    #[test]
    fn services_and_pdb() {
        let d = build(ClusterSpec::default());
        let h = d.headless_service.spec.as_ref().expect("spec");
        assert_eq!(h.cluster_ip.as_deref(), Some("None"));
        assert_eq!(h.publish_not_ready_addresses, Some(true));
        let c = d.client_service.spec.as_ref().expect("spec");
        assert_eq!(c.cluster_ip, None);
        assert_eq!(c.selector, Some(selector_labels("events")));
        let ports: Vec<_> = c.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, [7070, 7071, 9092]);
        let ports: Vec<_> = h.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, [7070, 7071, 9092], "the headless Service names every port too");
        let pdb = d.pod_disruption_budget.spec.as_ref().expect("spec");
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(pdb.min_available, None);
    }

    #[test]
    fn config_map_and_hash_follow_settings() {
        let mut spec = ClusterSpec::default();
        let base = build(spec.clone());
        spec.topic_defaults.insert("retention.ms".into(), "3600000".into());
        spec.broker =
            Some(BrokerSettings { block_cache_bytes: Some(134217728), ..BrokerSettings::default() });
        let changed = build(spec);
        let toml_text = &changed.config_map.data.as_ref().expect("data")[CONFIG_FILE];
        let parsed: toml::Table = toml_text.parse().expect("valid TOML");
        assert_eq!(parsed["block_cache_bytes"].as_integer(), Some(134217728));
        assert_eq!(parsed["topic_defaults"]["retention.ms"].as_str(), Some("3600000"));
        let hash = |d: &DesiredCluster| {
            d.stateful_set
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
        };
        assert!(hash(&base).is_some());
        assert_ne!(hash(&base), hash(&changed), "a config change changes the pod template");
        assert_eq!(hash(&base), hash(&build(ClusterSpec::default())), "stable");
    }

    #[test]
    fn overrides_rack_tier_and_image() {
        let mut spec = ClusterSpec {
            tier: Tier::Aggregate,
            version: Some("0.2.0".into()),
            rack: Some(RackAwareness { topology_key: "topology.kubernetes.io/zone".into() }),
            ..ClusterSpec::default()
        };
        let mut po = PodOverrides::default();
        po.labels.insert("team".into(), "data".into());
        po.labels.insert("app.kubernetes.io/name".into(), "not-allowed".into());
        po.node_selector.insert("pool".into(), "brokers".into());
        spec.pod_template = Some(po);
        spec.observability.otlp_endpoint = Some("http://otel:4317".into());
        let d = build(spec.clone());
        let p = pod_spec(&d);
        assert_eq!(p.containers[0].image.as_deref(), Some("tributary/tributary:0.2.0"));
        let tsc = &p.topology_spread_constraints.as_ref().expect("spread")[0];
        assert_eq!(tsc.topology_key, "topology.kubernetes.io/zone");
        assert_eq!(tsc.max_skew, 1);
        let labels = d
            .stateful_set
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .expect("labels");
        assert_eq!(labels["team"], "data");
        assert_eq!(labels["app.kubernetes.io/name"], "tributary", "operator labels win");
        assert_eq!(labels["tributary.dev/tier"], "aggregate");
        assert_eq!(p.node_selector.as_ref().map(|n| n["pool"].as_str()), Some("brokers"));
        let env = p.containers[0].env.clone().unwrap_or_default();
        assert!(env.iter().any(
            |e| e.name == "OTEL_EXPORTER_OTLP_ENDPOINT" && e.value.as_deref() == Some("http://otel:4317")
        ));

        spec.image = Some("registry.example/tributary@sha256:abc".into());
        let d = build(spec);
        assert_eq!(
            pod_spec(&d).containers[0].image.as_deref(),
            Some("registry.example/tributary@sha256:abc")
        );
    }

    #[test]
    fn many_brokers_find_each_other_through_the_config_map() {
        let d = build(ClusterSpec { replicas: 5, ..ClusterSpec::default() });
        assert_eq!(d.stateful_set.spec.as_ref().and_then(|s| s.replicas), Some(5));
        let data = d.config_map.data.as_ref().expect("data");
        assert_eq!(
            data[PEERS_KEY],
            "0@events-0.events-brokers.prod.svc:7070,1@events-1.events-brokers.prod.svc:7070,\
             2@events-2.events-brokers.prod.svc:7070,3@events-3.events-brokers.prod.svc:7070,\
             4@events-4.events-brokers.prod.svc:7070"
        );
        assert_eq!(data[CONTROLLERS_KEY], "0,1,2");
        assert_eq!(controllers(1), "0");
        assert_eq!(controllers(2), "0,1");
        let env = pod_spec(&d).containers[0].env.clone().unwrap_or_default();
        for (var, key) in [("TRIBUTARY_PEERS", PEERS_KEY), ("TRIBUTARY_CONTROLLERS", CONTROLLERS_KEY)] {
            let e = env.iter().find(|e| e.name == var).expect(var);
            let r =
                e.value_from.as_ref().and_then(|v| v.config_map_key_ref.as_ref()).expect("configMapKeyRef");
            assert_eq!((r.name.as_str(), r.key.as_str()), ("events-config", key));
        }
        // Scaling changes the ConfigMap, not the pod template: no roll.
        let three = build(ClusterSpec { replicas: 3, ..ClusterSpec::default() });
        assert_eq!(
            d.stateful_set.spec.as_ref().map(|s| &s.template),
            three.stateful_set.spec.as_ref().map(|s| &s.template)
        );
        assert_ne!(d.config_map, three.config_map);
    }

    #[test]
    fn rack_awareness_adds_the_init_step_and_its_service_account() {
        let plain = build(ClusterSpec::default());
        assert!(pod_spec(&plain).init_containers.is_none());
        assert_eq!(pod_spec(&plain).service_account_name, None);

        let spec = ClusterSpec {
            replicas: 3,
            rack: Some(RackAwareness { topology_key: "topology.kubernetes.io/zone".into() }),
            ..ClusterSpec::default()
        };
        let d = build(spec.clone());
        let p = pod_spec(&d);
        let init = &p.init_containers.as_ref().expect("init")[0];
        assert_eq!(init.command.as_deref(), Some(&["tributary-operator".to_string()][..]));
        assert_eq!(
            init.args.as_ref().expect("args").join(" "),
            "rack-init --node $(NODE_NAME) --topology-key topology.kubernetes.io/zone \
             --config-in /etc/tributary/broker.toml --config-out /var/run/tributary/broker.toml"
        );
        let node =
            init.env.as_ref().and_then(|e| e.iter().find(|v| v.name == "NODE_NAME")).expect("NODE_NAME");
        let path = node.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
        assert_eq!(path, Some("spec.nodeName"));
        assert_eq!(p.service_account_name.as_deref(), Some(RACK_SERVICE_ACCOUNT));
        let args = p.containers[0].args.as_ref().expect("args");
        assert_eq!(args[1], "/var/run/tributary/broker.toml", "the broker reads the copy with its rack");
        assert!(p.volumes.iter().flatten().any(|v| v.name == "runtime" && v.empty_dir.is_some()));

        let mut named = spec;
        named.pod_template =
            Some(PodOverrides { service_account_name: Some("mine".into()), ..PodOverrides::default() });
        assert_eq!(pod_spec(&build(named)).service_account_name.as_deref(), Some("mine"));
    }

    #[test]
    fn claims_follow_delete_claims_on_scale_down() {
        let mut spec = ClusterSpec::default();
        spec.storage.delete_claims_on_scale_down = true;
        let d = build(spec);
        let policy =
            d.stateful_set.spec.as_ref().and_then(|s| s.persistent_volume_claim_retention_policy.clone());
        assert_eq!(policy.and_then(|p| p.when_scaled).as_deref(), Some("Delete"));
    }

    #[test]
    fn values_carry_api_version_and_kind() {
        let values = build(ClusterSpec::default()).to_values().expect("json");
        let kinds: Vec<_> = values.iter().map(|v| (v["apiVersion"].as_str(), v["kind"].as_str())).collect();
        assert_eq!(
            kinds,
            [
                (Some("v1"), Some("ConfigMap")),
                (Some("v1"), Some("Service")),
                (Some("v1"), Some("Service")),
                (Some("apps/v1"), Some("StatefulSet")),
                (Some("policy/v1"), Some("PodDisruptionBudget")),
            ]
        );
    }
}
