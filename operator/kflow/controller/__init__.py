"""The Kubernetes side of kflow: kopf handlers, the inline executor, timers and status."""
