//! The Tributary operator: reconciles Cluster, Topic and MirrorLink (filled by the operator issue).
