{{/*
RBAC rules for the namespaced objects the operator touches. Each verb is here for a reason:
- trainingjobs: kopf lists/watches them and patches finalizers and its progress annotations; delete only for
  runPolicy.ttlSecondsAfterFinished;
- trainingjobs/status: the operator writes status (phase, conditions, progress, recovery);
- trainingjobs/finalizers update: children carry ownerReferences with blockOwnerDeletion (kopf.adopt),
  which clusters with the OwnerReferencesPermissionEnforcement admission plugin (OpenShift) require;
- pods: create replicas, delete failed/finished ones, watch them to detect failures, patch labels (a warm
  standby pod taking a failed rank over is relabelled);
- services (headless per job) and configmaps (spec file): create, keep up to date, delete;
- persistentvolumeclaims: one checkpoint claim per server rank (recovery.checkpoint.volume), created
  before the pods and deleted with the job unless its retainPolicy is Retain (no patch: claims are immutable);
- events: kopf and the operator post Kubernetes Events (create only);
- workloads (kueue.x-k8s.io): a job labelled kueue.x-k8s.io/queue-name gets a Workload the operator creates and
  reads (Kueue's verdict), and marks Finished in its status (which releases the quota);
- podgroups (Volcano, scheduler-plugins): runPolicy.gang creates one per job, owned by it (garbage-collected);
- networkpolicies: one per job (spec.networkPolicy) lets only its pods reach its servers, owned by it.
- secrets: each job's own Redis user (an ACL user limited to its keys) goes in a Secret "<job>-redis" its pods
  read by secretKeyRef: created once, read back after an operator restart, deleted with the job.
Nothing else grants update; nothing grants deletecollection, pods/exec, pods/log, or list/watch on secrets.
Call with (dict "ctx" . "peeringKind" "kopfpeerings" or "").
*/}}
{{- define "tj.namespacedRules" -}}
- apiGroups: ["training.cpr.dev"]
  resources: ["trainingjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["training.cpr.dev"]
  resources: ["trainingjobs/status"]
  verbs: ["get", "patch"]
- apiGroups: ["training.cpr.dev"]
  resources: ["trainingjobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "delete"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "create"]
- apiGroups: ["scheduling.volcano.sh", "scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["create"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads/status"]
  verbs: ["patch"]
{{- end }}

{{/*
kopf peering: watch every peering object of the kind (kopf filters by name itself), and read and
patch (keep-alives in .status) only ours. kopf serves both API groups when both exist.
Call with (dict "ctx" . "resource" "kopfpeerings"|"clusterkopfpeerings").
*/}}
{{- define "tj.peeringRules" -}}
- apiGroups: ["kopf.dev", "zalando.org"]
  resources: [{{ .resource | quote }}]
  verbs: ["list", "watch"]
- apiGroups: ["kopf.dev", "zalando.org"]
  resources: [{{ .resource | quote }}]
  resourceNames: [{{ include "tj.peeringName" .ctx | quote }}]
  verbs: ["get", "patch"]
{{- end }}
