"""The `on_cluster` suite: golden delivery and `rollout undo` on a real Kubernetes cluster (docs/cluster-kind.md).

Never run on the machine this project is developed on (no Kubernetes there); `pytest -m on_cluster` runs it
where `KUBECONFIG` points at a cluster set up as docs/cluster-kind.md describes.
"""
