"""The Kubernetes side of kflow: the kopf operator, in layers (import-linter keeps them).

- ``main`` wires settings, store, engine and controller to kopf; ``handlers`` are the
  kopf handlers, which parse bodies into typed values (``bodies``) and call the
  ``controller``'s `Controller`;
- the controller keeps one record per WorkflowRun (``runs.TrackedRun``); ``adoption``
  and ``delivery`` (annotations) work for it through a narrow interface (``control``);
  ``workflows`` follows the `WorkflowDefinition` objects (``catalog``: where runs execute);
- ``inline_executor`` runs segments in the operator, ``pod_executor`` in Pods (its state
  machine in ``pod_states``, where a Pod goes in ``pod_placement``, the manifests in
  ``pod_manifest``); ``mirror`` writes statuses (built by ``status``), ``expiry``
  deletes finished WorkflowRuns, ``timers`` wakes sleeping runs;
- ``kube`` is the only module that talks to the API server outside kopf.
"""
