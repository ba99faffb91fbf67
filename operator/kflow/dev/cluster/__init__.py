"""A real Kubernetes control plane for tests and local use, with no containers.

- `build`: builds kube-apiserver, kube-controller-manager and kube-scheduler from Debian's
  ``kubernetes`` source package once, cached outside the checkout;
- `cluster`: `LocalCluster` runs them with Debian's etcd on loopback, on free ports;
- `node`: `NodeStandIn`, a test-only stand-in for a kubelet that runs Pods as local
  processes.

``python -m kflow.dev.cluster up|down|status|build`` drives it from a shell
(``scripts/local-cluster.sh`` installs what it needs first). Development tooling only: the
operator never imports it.
"""

from kflow.dev.cluster.build import BuildError, K8sBinaries, cache_root, ensure_built
from kflow.dev.cluster.cluster import ClusterError, LocalCluster
from kflow.dev.cluster.kubeconfig import ApiEndpoint, write_kubeconfig
from kflow.dev.cluster.node import NodeStandIn

__all__ = [
    "ApiEndpoint",
    "BuildError",
    "ClusterError",
    "K8sBinaries",
    "LocalCluster",
    "NodeStandIn",
    "cache_root",
    "ensure_built",
    "write_kubeconfig",
]
