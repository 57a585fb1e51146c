//! The Tributary operator: turns `Cluster`, `Topic` and `MirrorLink` objects
//! into running brokers and topics.
//!
//! The crate is split so that every decision can be tested without a
//! Kubernetes API server:
//!
//! - [`crdgen`]: the CRD YAML printed by `tributary-operator crd` and checked
//!   into `crds/generated/` and the Helm chart.
//! - [`cluster`]: pure functions from a Cluster to the objects that run it
//!   (ConfigMap, headless and client Services, StatefulSet,
//!   PodDisruptionBudget), each owned by the Cluster.
//! - [`topic_plan`]: a pure function from a Topic, its Cluster and what the
//!   brokers report to the admin calls to make and the conditions to report.
//!
//! - [`health`]: the brokers' view of their cluster (members, controller,
//!   every partition's replicas and ISR) that rolls and scale-downs read.
//! - [`roll`]: which broker pod to restart next for a rolling update, gated
//!   on what the brokers report.
//! - [`scale`]: the broker count, drain-before-shrink and rebalancing.
//! - [`mirror_plan`]: a MirrorLink's checks, including the cycle check for
//!   `Identity` naming.
//! - [`controller`]: the kube-rs controllers that run these against the API
//!   server; [`admin`] (the client crate's `Admin`) is their only way to the
//!   brokers, and
//!   [`admin_batch`] coalesces concurrent reconciles' calls; [`server`] and
//!   [`metrics`] serve `/metrics`, `/healthz` and `/readyz`.
//!
//! - [`local`]: the same manifests run as local broker processes, with no
//!   Kubernetes (`tributary-operator local -f DIR`).
//!
//! The binary (`src/main.rs`) wires these into subcommands.

pub mod admin;
pub mod admin_batch;
pub mod cluster;
pub mod controller;
pub mod crdgen;
pub mod health;
pub mod labels;
pub mod local;
pub mod metrics;
pub mod mirror_plan;
pub mod rack;
pub mod roll;
pub mod scale;
pub mod server;
pub mod topic_plan;
