#!/usr/bin/env bash
# End-to-end test of the TrainingJob operator on a kind cluster: partial recovery from four kinds of failure on a
# running job, then Kueue admission of a queued job. See e2e/README.md.
#
#   1. create a kind cluster (e2e/kind-config.yaml: a control plane and two workers; temporary KUBECONFIG: yours is
#      never touched) and label the workers with the Kueue flavor's node label;
#   2. build the operator and trainer images with docker and `kind load` them (trainer image on the workers only),
#      with the Redis and MinIO images;
#   3. helm install charts/trainingjob-operator (2 operator replicas with kopf peering, bundled Redis) with
#      e2e/chart-values.yaml: operator and Redis on the control plane, which is never drained;
#   4. chaos job, namespace tj-e2e-chaos: MinIO (e2e/manifests/minio.yaml) and its bucket, then
#      examples/dlrm-kind-long.yaml (checkpoints in MinIO); wait until status.progress.samples passes
#      FAULT_AT_PERCENT of the target, then inject one after another, each only once the previous one has been
#      recovered from and training goes on:
#        (a) `kubectl delete pod --force` of embedding-server-0             (a disruption: not counted),
#        (b) SIGKILL of embedding-server-1's container from its kind node   (a crash: ExitCode137, counted),
#        (c) SIGSTOP of embedding-server-0's container from its kind node   (a hang: HeartbeatTimeout, counted),
#        (d) `kubectl drain` of the worker running embedding-server-1       (a disruption per pod on it);
#      after each: only the failed pods were replaced (new UIDs, every other pod keeps its UID), the failure was
#      counted once with the expected reason, and each replaced embedding server restored a checkpoint
#      (its recovery record in Redis: `loaded`, `restored_progress` > 0);
#   5. the chaos job Succeeds with status.recovery.failures = the failures injected (Redis's failure stream and the
#      replicas' restarts agree), every checkpoint pointer in the object store;
#   6. Kueue (pinned release manifest), a ResourceFlavor and ClusterQueue; examples/dlrm-kind.yaml labelled
#      kueue.x-k8s.io/queue-name in namespace tj-e2e-kueue: its Workload trainingjob-<job> exists and the job is
#      held (Suspended, no pods) while the LocalQueue is missing; the LocalQueue is created, Kueue admits the
#      Workload, the pods run with the flavor's node label, the job Succeeds, the Workload gets Finished=True and
#      the ClusterQueue's quota is released;
#   7. the pytorch workload, namespace tj-e2e-pytorch: examples/llama-sft-kind.yaml (a tiny Llama's SFT over gloo
#      in two worker pods, its distributed checkpoints on a claim); once it trained PYTORCH_DELETE_AT_STEP steps,
#      worker-1's pod is deleted: it alone is replaced (worker-0 keeps its UID), both scripts resume from a
#      checkpoint (a second generation in Redis, resumed from a step > 0), the job Succeeds and its result
#      reports held-out answer accuracy in both reasoning modes, thinking on at least PYTORCH_MIN_ACCURACY;
#   8. on failure print what was awaited and the state (tj, pods, describe, operator logs); always save logs under
#      $ARTIFACTS, then delete the cluster.
#
# Needs docker, kind, kubectl, helm, jq and timeout. Knobs (environment): CLUSTER_NAME, KIND_NODE_IMAGE, ARTIFACTS,
# KEEP_CLUSTER=1 (leave the cluster up), SKIP_BUILD=1 (reuse the images), KUEUE_VERSION, FAULT_AT_PERCENT, and the
# *_TIMEOUT_S values below. `./e2e/run.sh --cleanup` deletes a cluster a KEEP_CLUSTER=1 run left behind.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_NAME="${CLUSTER_NAME:-tj-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
ARTIFACTS="${ARTIFACTS:-${REPO_ROOT}/e2e/artifacts}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"

OPERATOR_IMAGE_REPO="trainingjob-operator"
TRAINER_IMAGE_REPO="dlrm-trainer"
IMAGE_TAG="e2e"  # the examples and e2e/manifests/minio-bucket.yaml name dlrm-trainer:e2e
REDIS_IMAGE="docker.io/library/redis:7.2-alpine"  # the chart's default, preloaded to avoid pulls
MINIO_IMAGE="quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"  # as in e2e/manifests/minio.yaml
KUEUE_VERSION="${KUEUE_VERSION:-v0.9.1}"

RELEASE="tj"
OPERATOR_NAMESPACE="tj-system"
REDIS_DEPLOYMENT="${RELEASE}-trainingjob-operator-redis"
CHART_VALUES="${REPO_ROOT}/e2e/chart-values.yaml"
EXPECTED_PODS=5  # per job: 2 trainers + 2 embedding servers + 1 sync server

# The chaos job: failures injected while it trains, checkpoints in MinIO.
CHAOS_NAMESPACE="tj-e2e-chaos"
CHAOS_MANIFEST="${REPO_ROOT}/examples/dlrm-kind-long.yaml"
CHAOS_JOB="dlrm-kind-long"
MINIO_MANIFEST="${REPO_ROOT}/e2e/manifests/minio.yaml"
BUCKET_JOB_MANIFEST="${REPO_ROOT}/e2e/manifests/minio-bucket.yaml"
KEY_PREFIX="tj:${CHAOS_NAMESPACE}:${CHAOS_JOB}:"  # coordination.key_prefix: the job's keys in Redis
FAULT_AT_PERCENT="${FAULT_AT_PERCENT:-20}"  # first failure once this share of the target samples is trained
# Reasons a disruption (pod delete, drain) may be recorded with: api.spec.DISRUPTION_REASONS.
DISRUPTION_REASONS="Deleted|Evicted|EvictionByEvictionAPI|DisruptionTarget|TerminationByKubelet|Terminated"

# The queued job: examples/dlrm-kind.yaml, labelled for Kueue.
JOB_NAMESPACE="tj-e2e-kueue"
JOB_MANIFEST="${REPO_ROOT}/examples/dlrm-kind.yaml"
JOB_NAME="dlrm-kind"
KUEUE_QUEUES_MANIFEST="${REPO_ROOT}/e2e/manifests/kueue-cluster-queue.yaml"
LOCAL_QUEUE_MANIFEST="${REPO_ROOT}/e2e/manifests/kueue-local-queue.yaml"
QUEUE_LABEL="kueue.x-k8s.io/queue-name"
LOCAL_QUEUE="e2e-queue"
CLUSTER_QUEUE="e2e-cluster-queue"
WORKLOAD="trainingjob-${JOB_NAME}"  # k8s.kueue.workload_name
FLAVOR_LABEL_KEY="e2e.training.cpr.dev/pool"  # the ResourceFlavor's nodeLabels, set on both workers
FLAVOR_LABEL_VALUE="workers"

# The pytorch workload: examples/llama-sft-kind.yaml.
PYTORCH_NAMESPACE="tj-e2e-pytorch"
PYTORCH_MANIFEST="${REPO_ROOT}/examples/llama-sft-kind.yaml"
PYTORCH_JOB="llama-sft"
PYTORCH_DELETE_AT_STEP="${PYTORCH_DELETE_AT_STEP:-150}"
PYTORCH_MIN_ACCURACY="${PYTORCH_MIN_ACCURACY:-0.5}"

HELM_TIMEOUT="${HELM_TIMEOUT:-5m}"
ROLLOUT_TIMEOUT_S="${ROLLOUT_TIMEOUT_S:-300}"
PODS_RUNNING_TIMEOUT_S="${PODS_RUNNING_TIMEOUT_S:-600}"
THRESHOLD_TIMEOUT_S="${THRESHOLD_TIMEOUT_S:-900}"
PROGRESS_TIMEOUT_S="${PROGRESS_TIMEOUT_S:-300}"
REPLACEMENT_TIMEOUT_S="${REPLACEMENT_TIMEOUT_S:-300}"
DRAIN_TIMEOUT_S="${DRAIN_TIMEOUT_S:-300}"
JOB_TIMEOUT_S="${JOB_TIMEOUT_S:-2400}"
KUEUE_TIMEOUT_S="${KUEUE_TIMEOUT_S:-300}"
HOLD_CHECK_S="${HOLD_CHECK_S:-20}"

# Bookkeeping of the chaos part.
EXPECTED_FAILURES=0  # failures injected so far (each replaced pod of a drain is one)
REPLACED_ES=()       # "replica uid" of every embedding server incarnation that replaced a failed one
BEFORE=""            # job_pods of the chaos job just before the current fault

KUBECONFIG="$(mktemp "${TMPDIR:-/tmp}/tj-e2e-kubeconfig.XXXXXX")"
export KUBECONFIG

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

usage() {
  sed -n '2,/^set -o/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
}

require_tools() {
  local tool
  for tool in docker kind kubectl helm jq timeout; do
    command -v "${tool}" >/dev/null || fail "${tool} is not installed"
  done
}

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; }

# --- failure reports and cleanup -----------------------------------------------------------------

# What a reader of the CI log needs first: the jobs, their pods and events, the Workloads, the operator's log.
dump_state() {
  local ns
  log "state at the failure (full logs in ${ARTIFACTS}):"
  {
    kubectl get nodes -o wide || true
    for ns in "${CHAOS_NAMESPACE}" "${JOB_NAMESPACE}"; do
      kubectl get namespace "${ns}" >/dev/null 2>&1 || continue
      echo "--- kubectl -n ${ns} get tj,pods -o wide"
      kubectl -n "${ns}" get tj,pods -o wide || true
      echo "--- kubectl -n ${ns} describe tj"
      kubectl -n "${ns}" describe tj || true
      kubectl -n "${ns}" get workloads.kueue.x-k8s.io -o wide 2>/dev/null || true
    done
    echo "--- operator logs (last 200 lines per replica)"
    kubectl -n "${OPERATOR_NAMESPACE}" logs -l app.kubernetes.io/component=operator --all-containers --prefix \
      --tail=200 || true
  } >&2 2>&1
}

# Save what is needed to debug a run: job and operator state, pod logs, events, Kueue objects, node logs.
collect_artifacts() {
  mkdir -p "${ARTIFACTS}"
  log "saving logs and descriptions to ${ARTIFACTS}"
  kubectl get tj -A -o yaml >"${ARTIFACTS}/trainingjobs.yaml" 2>&1 || true
  kubectl get pods -A -o wide >"${ARTIFACTS}/pods.txt" 2>&1 || true
  kubectl get nodes -o wide >"${ARTIFACTS}/nodes.txt" 2>&1 || true
  kubectl get events -A --sort-by=.lastTimestamp >"${ARTIFACTS}/events.txt" 2>&1 || true
  kubectl get workloads.kueue.x-k8s.io,localqueues.kueue.x-k8s.io -A -o yaml >"${ARTIFACTS}/kueue-workloads.yaml" \
    2>/dev/null || true
  kubectl get clusterqueues.kueue.x-k8s.io,resourceflavors.kueue.x-k8s.io -o yaml \
    >"${ARTIFACTS}/kueue-cluster-queues.yaml" 2>/dev/null || true
  local ns pod
  for ns in "${OPERATOR_NAMESPACE}" "${CHAOS_NAMESPACE}" "${JOB_NAMESPACE}" kueue-system; do
    kubectl get namespace "${ns}" >/dev/null 2>&1 || continue
    kubectl -n "${ns}" describe tj >"${ARTIFACTS}/describe-tj-${ns}.txt" 2>/dev/null || true
    kubectl -n "${ns}" describe pods >"${ARTIFACTS}/describe-pods-${ns}.txt" 2>&1 || true
    for pod in $(kubectl -n "${ns}" get pods -o name 2>/dev/null); do
      kubectl -n "${ns}" logs "${pod}" --all-containers --timestamps \
        >"${ARTIFACTS}/logs-${ns}-${pod#pod/}.txt" 2>&1 || true
      kubectl -n "${ns}" logs "${pod}" --all-containers --timestamps --previous \
        >"${ARTIFACTS}/logs-${ns}-${pod#pod/}-previous.txt" 2>/dev/null || true
    done
  done
  # The chaos job's coordination state: failures, recovery records, checkpoint pointers.
  redis --scan --pattern "${KEY_PREFIX}*" >"${ARTIFACTS}/redis-keys.txt" 2>&1 || true
  redis XRANGE "${KEY_PREFIX}failures" - + >"${ARTIFACTS}/redis-failures.txt" 2>&1 || true
  kubectl get clusterkopfpeerings -o yaml >"${ARTIFACTS}/kopf-peerings.yaml" 2>&1 || true
  kind export logs "${ARTIFACTS}/kind" --name "${CLUSTER_NAME}" >/dev/null 2>&1 || true
}

cleanup() {
  local rc=$?
  trap - EXIT
  if cluster_exists; then
    [[ ${rc} -eq 0 ]] || dump_state
    collect_artifacts
    if [[ "${KEEP_CLUSTER}" == "1" ]]; then
      log "KEEP_CLUSTER=1: cluster ${CLUSTER_NAME} left running (KUBECONFIG=${KUBECONFIG});" \
          "./e2e/run.sh --cleanup deletes it"
    else
      kind delete cluster --name "${CLUSTER_NAME}" >/dev/null 2>&1 || true
      rm -f "${KUBECONFIG}"
    fi
  else
    rm -f "${KUBECONFIG}"
  fi
  if [[ ${rc} -eq 0 ]]; then log "PASS"; else log "FAILED with exit code ${rc}; artifacts in ${ARTIFACTS}"; fi
  exit "${rc}"
}

# --- waiting --------------------------------------------------------------------------------------

# wait_until TIMEOUT_S DESCRIPTION COMMAND...: rerun COMMAND every WAIT_POLL_S (5) seconds until it succeeds; fail
# naming what was awaited once TIMEOUT_S have passed. COMMAND may itself fail the run at once (a Failed job).
wait_until() {
  local timeout_s=$1 what=$2
  shift 2
  local deadline=$((SECONDS + timeout_s))
  log "waiting up to ${timeout_s}s for ${what}"
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out after ${timeout_s}s waiting for ${what}"
    sleep "${WAIT_POLL_S:-5}"
  done
}

tj_field() {  # tj_field NAMESPACE JOB JSONPATH: one field of a TrainingJob, empty when unset
  kubectl -n "$1" get tj "$2" -o "jsonpath=${3}" 2>/dev/null || true
}

number_or_zero() { if [[ "${1:-}" =~ ^[0-9]+$ ]]; then echo "$1"; else echo 0; fi; }

fail_if_job_failed() {  # fail_if_job_failed NAMESPACE JOB
  if [[ "$(tj_field "$1" "$2" '{.status.phase}')" == "Failed" ]]; then
    kubectl -n "$1" get tj "$2" -o yaml >&2 || true
    fail "TrainingJob $1/$2 is Failed"
  fi
}

# "name uid phase node" of every live pod the TrainingJob owns, sorted by name.
job_pods() {  # job_pods NAMESPACE JOB
  kubectl -n "$1" get pods -o json | jq -r --arg job "$2" '
    .items[]
    | select(any(.metadata.ownerReferences[]?; .kind == "TrainingJob" and .name == $job))
    | select(.metadata.deletionTimestamp == null)
    | "\(.metadata.name) \(.metadata.uid) \(.status.phase) \(.spec.nodeName // "-")"' | sort
}

uid_of() { awk -v pod="$2" '$1 == pod {print $2}' <<<"$1"; }   # uid_of LISTING POD
node_of() { awk -v pod="$2" '$1 == pod {print $4}' <<<"$1"; }  # node_of LISTING POD

all_running() {  # all_running LISTING: EXPECTED_PODS pods, every one Running
  [[ $(grep -c . <<<"$1") -eq ${EXPECTED_PODS} && -z "$(awk '$3 != "Running"' <<<"$1")" ]]
}

pods_running() {  # pods_running NAMESPACE JOB
  fail_if_job_failed "$1" "$2"
  all_running "$(job_pods "$1" "$2")"
}

job_succeeded() {  # job_succeeded NAMESPACE JOB
  fail_if_job_failed "$1" "$2"
  [[ "$(tj_field "$1" "$2" '{.status.phase}')" == "Succeeded" ]]
}

# One redis-cli command in the chart's bundled Redis (no password by default; jobs use their own ACL users).
redis() {
  timeout 60 kubectl -n "${OPERATOR_NAMESPACE}" exec "deploy/${REDIS_DEPLOYMENT}" -c redis -- redis-cli --raw "$@"
}

# --- cluster, images, chart -----------------------------------------------------------------------

create_cluster() {
  log "creating kind cluster ${CLUSTER_NAME}"
  local args=(create cluster --name "${CLUSTER_NAME}" --config "${REPO_ROOT}/e2e/kind-config.yaml"
              --kubeconfig "${KUBECONFIG}" --wait 180s)
  [[ -n "${KIND_NODE_IMAGE}" ]] && args+=(--image "${KIND_NODE_IMAGE}")
  kind "${args[@]}"
  kubectl label nodes -l '!node-role.kubernetes.io/control-plane' "${FLAVOR_LABEL_KEY}=${FLAVOR_LABEL_VALUE}"
  local workers
  workers="$(kubectl get nodes -l "${FLAVOR_LABEL_KEY}=${FLAVOR_LABEL_VALUE}" -o name | grep -c .)"
  [[ "${workers}" -eq 2 ]] || fail "expected 2 worker nodes (e2e/kind-config.yaml), found ${workers}"
  kubectl get nodes -o wide
}

build_and_load_images() {
  if [[ "${SKIP_BUILD}" != "1" ]]; then
    log "building images"
    docker build -f "${REPO_ROOT}/operator/Dockerfile" -t "${OPERATOR_IMAGE_REPO}:${IMAGE_TAG}" "${REPO_ROOT}"
    docker build -f "${REPO_ROOT}/trainer_image/Dockerfile" -t "${TRAINER_IMAGE_REPO}:${IMAGE_TAG}" "${REPO_ROOT}"
  fi
  local image
  for image in "${REDIS_IMAGE}" "${MINIO_IMAGE}"; do
    docker image inspect "${image}" >/dev/null 2>&1 || docker pull "${image}"
  done
  # The operator, Redis and MinIO run on the control plane, TrainingJob pods on the workers: each image goes
  # only where it runs (the ~2 GB trainer image twice, not three times).
  local workers
  workers="$(kind get nodes --name "${CLUSTER_NAME}" | grep -v -- '-control-plane$' | paste -sd, -)"
  log "loading images into kind (control plane: operator, Redis, MinIO; ${workers}: trainer)"
  kind load docker-image --name "${CLUSTER_NAME}" --nodes "${CLUSTER_NAME}-control-plane" \
    "${OPERATOR_IMAGE_REPO}:${IMAGE_TAG}" "${REDIS_IMAGE}" "${MINIO_IMAGE}"
  kind load docker-image --name "${CLUSTER_NAME}" --nodes "${workers}" "${TRAINER_IMAGE_REPO}:${IMAGE_TAG}"
}

install_chart() {
  log "installing the chart (release ${RELEASE} in ${OPERATOR_NAMESPACE})"
  helm upgrade --install "${RELEASE}" "${REPO_ROOT}/charts/trainingjob-operator" \
    --namespace "${OPERATOR_NAMESPACE}" --create-namespace \
    --values "${CHART_VALUES}" \
    --set operator.image.repository="${OPERATOR_IMAGE_REPO}" \
    --set operator.image.tag="${IMAGE_TAG}" \
    --set operator.image.pullPolicy=Never \
    --set trainer.image.repository="${TRAINER_IMAGE_REPO}" \
    --set trainer.image.tag="${IMAGE_TAG}" \
    --wait --timeout "${HELM_TIMEOUT}"
  kubectl get crd trainingjobs.training.cpr.dev >/dev/null
  kubectl -n "${OPERATOR_NAMESPACE}" get pods -o wide
  # The drain must never move the operator or Redis (whose local-path claim is bound to its node).
  local off_plane
  off_plane="$(kubectl -n "${OPERATOR_NAMESPACE}" get pods -o json | jq -r --arg cp "${CLUSTER_NAME}-control-plane" \
    '.items[] | select(.spec.nodeName != $cp) | .metadata.name')"
  [[ -z "${off_plane}" ]] || fail "pods of ${OPERATOR_NAMESPACE} outside the control plane: ${off_plane}"
  redis ping >/dev/null
}

# --- the chaos job --------------------------------------------------------------------------------

chaos_field() { tj_field "${CHAOS_NAMESPACE}" "${CHAOS_JOB}" "$1"; }
chaos_phase() { chaos_field '{.status.phase}'; }
chaos_samples() { number_or_zero "$(chaos_field '{.status.progress.samples}')"; }
chaos_failures() { number_or_zero "$(chaos_field '{.status.recovery.failures}')"; }
chaos_target() {
  local target
  target="$(number_or_zero "$(chaos_field '{.status.progress.targetSamples}')")"
  [[ "${target}" -gt 0 ]] || target="$(number_or_zero "$(chaos_field '{.spec.data.trainSamples}')")"
  echo "${target}"
}

bucket_created() {
  local failed
  failed="$(kubectl -n "${CHAOS_NAMESPACE}" get job minio-bucket \
    -o 'jsonpath={.status.conditions[?(@.type=="Failed")].status}' 2>/dev/null || true)"
  if [[ "${failed}" == "True" ]]; then
    kubectl -n "${CHAOS_NAMESPACE}" logs job/minio-bucket >&2 || true
    fail "job/minio-bucket failed to create the checkpoint bucket"
  fi
  [[ "$(kubectl -n "${CHAOS_NAMESPACE}" get job minio-bucket -o 'jsonpath={.status.succeeded}' 2>/dev/null)" == "1" ]]
}

# The first fault waits for a sample threshold, not a time: slow or fast runners inject at the same point.
past_threshold() {  # past_threshold SAMPLES
  fail_if_job_failed "${CHAOS_NAMESPACE}" "${CHAOS_JOB}"
  [[ "$(chaos_phase)" != "Succeeded" ]] \
    || fail "${CHAOS_JOB} finished before the first failure was injected: raise data.trainSamples in ${CHAOS_MANIFEST}"
  [[ "$(chaos_samples)" -ge "$1" ]]
}

# A fault injected after the last sample tests nothing: refuse to go on.
still_training() {  # still_training FAULT
  local phase samples target
  phase="$(chaos_phase)"
  samples="$(chaos_samples)"
  target="$(chaos_target)"
  [[ "${phase}" == "Running" && "${samples}" -lt "${target}" ]] \
    || fail "${CHAOS_JOB} is ${phase:-?} at ${samples}/${target} samples before the ${1} could be injected:" \
            "raise data.trainSamples in ${CHAOS_MANIFEST}"
}

# True once the shard's checkpoint pointer (what a replacement restores) names a checkpoint with progress, and it
# lies in the MinIO bucket of the job's objectStore (s3://checkpoints/e2e/<namespace>/<job>/...).
checkpoint_in_object_store() {  # checkpoint_in_object_store SHARD
  local pointer progress path
  pointer="$(redis GET "${KEY_PREFIX}checkpoint:$1" 2>/dev/null || true)"
  [[ -n "${pointer}" ]] || return 1
  progress="$(number_or_zero "$(jq -r '.progress // 0 | floor' <<<"${pointer}" 2>/dev/null || true)")"
  path="$(jq -r '.path // ""' <<<"${pointer}" 2>/dev/null || true)"
  [[ "${progress}" -gt 0 && -n "${path}" ]] || return 1
  [[ "${path}" == "s3://checkpoints/e2e/${CHAOS_NAMESPACE}/${CHAOS_JOB}/"* ]] \
    || fail "shard $1's checkpoint is at ${path}, not in the MinIO bucket of ${CHAOS_MANIFEST}"
}

start_chaos_job() {
  log "chaos job: MinIO, its bucket and ${CHAOS_MANIFEST} in namespace ${CHAOS_NAMESPACE}"
  kubectl create namespace "${CHAOS_NAMESPACE}"
  kubectl -n "${CHAOS_NAMESPACE}" apply -f "${MINIO_MANIFEST}"
  kubectl -n "${CHAOS_NAMESPACE}" rollout status deployment/minio --timeout="${ROLLOUT_TIMEOUT_S}s"
  kubectl -n "${CHAOS_NAMESPACE}" apply -f "${BUCKET_JOB_MANIFEST}"
  wait_until "${ROLLOUT_TIMEOUT_S}" "job/minio-bucket to create the checkpoint bucket" bucket_created

  kubectl -n "${CHAOS_NAMESPACE}" apply -f "${CHAOS_MANIFEST}"
  wait_until "${PODS_RUNNING_TIMEOUT_S}" "${EXPECTED_PODS} running pods of ${CHAOS_JOB}" \
    pods_running "${CHAOS_NAMESPACE}" "${CHAOS_JOB}"
  local target threshold
  target="$(chaos_target)"
  [[ "${target}" -gt 0 ]] || fail "${CHAOS_JOB} reports no target samples"
  threshold=$((target * FAULT_AT_PERCENT / 100))
  wait_until "${THRESHOLD_TIMEOUT_S}" "${CHAOS_JOB} to train ${threshold} of ${target} samples (${FAULT_AT_PERCENT}%)" \
    past_threshold "${threshold}"
  log "${CHAOS_JOB} at $(chaos_samples)/${target} samples: injecting failures"
}

# Before each fault: the job is still training, every pod runs, the shard about to fail has a checkpoint in
# the object store (what its replacement must restore). Sets BEFORE.
before_fault() {  # before_fault FAULT SHARD
  still_training "$1"
  wait_until "${PROGRESS_TIMEOUT_S}" "a checkpoint of shard $2 in the object store before the $1" \
    checkpoint_in_object_store "$2"
  BEFORE="$(job_pods "${CHAOS_NAMESPACE}" "${CHAOS_JOB}")"
  all_running "${BEFORE}" || fail "not every pod of ${CHAOS_JOB} runs before the $1:"$'\n'"${BEFORE}"
  log "pods before the $1:"$'\n'"${BEFORE}"
}

# True once every victim runs as a new pod (a UID it did not have before) and the job has all its pods running.
victims_replaced() {  # victims_replaced FAULT VICTIM...
  local fault=$1
  shift
  fail_if_job_failed "${CHAOS_NAMESPACE}" "${CHAOS_JOB}"
  [[ "$(chaos_phase)" != "Succeeded" ]] \
    || fail "${CHAOS_JOB} finished before it recovered from the ${fault}: raise data.trainSamples in ${CHAOS_MANIFEST}"
  local now victim uid
  now="$(job_pods "${CHAOS_NAMESPACE}" "${CHAOS_JOB}")"
  all_running "${now}" || return 1
  for victim in "$@"; do
    uid="$(uid_of "${now}" "${victim}")"
    [[ -n "${uid}" && "${uid}" != "$(uid_of "${BEFORE}" "${victim}")" ]] || return 1
  done
}

is_one_of() {  # is_one_of WORD LIST...
  local word=$1 item
  shift
  for item in "$@"; do [[ "${item}" == "${word}" ]] && return 0; done
  return 1
}

# Partial recovery: every victim has a new UID, every other pod of BEFORE still has its UID.
assert_only_victims_replaced() {  # assert_only_victims_replaced FAULT AFTER VICTIM...
  local fault=$1 after=$2
  shift 2
  local name uid _phase _node now
  [[ $(grep -c . <<<"${after}") -eq $(grep -c . <<<"${BEFORE}") ]] \
    || fail "after the ${fault} the job has other pods than before:"$'\n'"${BEFORE}"$'\n'"---"$'\n'"${after}"
  while read -r name uid _phase _node; do
    now="$(uid_of "${after}" "${name}")"
    if is_one_of "${name}" "$@"; then
      [[ -n "${now}" && "${now}" != "${uid}" ]] || fail "${name} was not replaced after the ${fault} (uid ${uid})"
    else
      [[ "${now}" == "${uid}" ]] \
        || fail "${name} (uid ${uid}) was replaced too after the ${fault}, now '${now}': only $* may be"
    fi
  done <<<"${BEFORE}"
  log "after the ${fault} only $* got new pods; the other $(($(grep -c . <<<"${BEFORE}") - $#)) kept their UIDs"
}

failures_reached() {  # failures_reached N
  fail_if_job_failed "${CHAOS_NAMESPACE}" "${CHAOS_JOB}"
  [[ "$(chaos_failures)" -ge "$1" ]]
}

recovery_record() {  # recovery_record REPLICA UID: what that incarnation restored (JSON), empty if none yet
  redis HGET "${KEY_PREFIX}recovery:$1" "$2" 2>/dev/null || true
}

has_recovery_record() { [[ -n "$(recovery_record "$1" "$2")" ]]; }

# A replaced embedding server must have restored its shard from a checkpoint, not started from initial weights.
assert_restored_checkpoint() {  # assert_restored_checkpoint REPLICA UID
  local record
  record="$(recovery_record "$1" "$2")"
  [[ -n "${record}" ]] || fail "no recovery record of $1 incarnation $2 in Redis (${KEY_PREFIX}recovery:$1)"
  jq -e '(.loaded | if type == "array" then length > 0 else . == true end)
         and ((.restored_progress // 0) > 0)' <<<"${record}" >/dev/null \
    || fail "$1 (uid $2) restored no checkpoint: $(jq -r '.description // .' <<<"${record}")"
  log "$1 (uid $2) restored $(jq -r '.restored_progress' <<<"${record}") samples' worth of its shard:" \
      "$(jq -r '.description // ""' <<<"${record}")"
}

recovered() {  # recovered SAMPLES: all pods run again and training went past SAMPLES (or finished)
  fail_if_job_failed "${CHAOS_NAMESPACE}" "${CHAOS_JOB}"
  local phase
  phase="$(chaos_phase)"
  [[ "${phase}" == "Succeeded" ]] && return 0
  [[ "${phase}" == "Running" && "$(chaos_samples)" -gt "$1" ]]
}

# After each fault: only the victims were replaced, the failure counted once per victim with the expected reason,
# every replaced embedding server restored a checkpoint, and training goes on.
after_fault() {  # after_fault FAULT REASON_REGEX VICTIM...
  local fault=$1 reasons=$2
  shift 2
  wait_until "${REPLACEMENT_TIMEOUT_S}" "replacements of $* after the ${fault}" victims_replaced "${fault}" "$@"
  local after
  after="$(job_pods "${CHAOS_NAMESPACE}" "${CHAOS_JOB}")"
  log "pods after the ${fault}:"$'\n'"${after}"
  assert_only_victims_replaced "${fault}" "${after}" "$@"

  EXPECTED_FAILURES=$((EXPECTED_FAILURES + $#))
  wait_until 120 "status.recovery.failures to reach ${EXPECTED_FAILURES} after the ${fault}" \
    failures_reached "${EXPECTED_FAILURES}"
  local failures reason
  failures="$(chaos_failures)"
  [[ "${failures}" -eq "${EXPECTED_FAILURES}" ]] \
    || fail "status.recovery.failures is ${failures} after the ${fault}, expected ${EXPECTED_FAILURES}"
  reason="$(chaos_field '{.status.recovery.lastFailure.reason}')"
  [[ "${reason}" =~ ^(${reasons})$ ]] || fail "the ${fault} was recorded as '${reason}', expected ${reasons}"
  log "the ${fault} counted: ${failures} failures so far, the last one ${reason}"

  local victim replica uid
  for victim in "$@"; do
    [[ "${victim}" == *-embedding-server-* ]] || continue
    replica="${victim#"${CHAOS_JOB}-"}"
    uid="$(uid_of "${after}" "${victim}")"
    wait_until 120 "the recovery record of ${replica} (uid ${uid}) in Redis" has_recovery_record "${replica}" "${uid}"
    assert_restored_checkpoint "${replica}" "${uid}"
    REPLACED_ES+=("${replica} ${uid}")
  done
  local samples
  samples="$(chaos_samples)"
  wait_until "${PROGRESS_TIMEOUT_S}" "${CHAOS_JOB} to run again and train past ${samples} samples after the ${fault}" \
    recovered "${samples}"
}

# kill -9 1 / kill -STOP 1 inside the container would do nothing: the image's ENTRYPOINT is exec-form python, so
# python is PID 1 of the container's PID namespace, and the kernel drops SIGKILL and SIGSTOP sent to a namespace's
# init from inside that namespace. Sent from the kind node (an ancestor namespace) they are delivered.
container_pid() {  # container_pid POD: "NODE PID" of its dlrm container's main process, as the kind node sees it
  local pod=$1 node cid pid
  node="$(kubectl -n "${CHAOS_NAMESPACE}" get pod "${pod}" -o jsonpath='{.spec.nodeName}')"
  cid="$(kubectl -n "${CHAOS_NAMESPACE}" get pod "${pod}" \
    -o jsonpath='{.status.containerStatuses[?(@.name=="dlrm")].containerID}')"
  [[ -n "${node}" && "${cid}" == *://* ]] || fail "no running dlrm container in ${pod} (node '${node}', id '${cid}')"
  pid="$(timeout 60 docker exec "${node}" crictl inspect --output json "${cid#*://}" | jq -r '.info.pid')"
  [[ "${pid}" =~ ^[1-9][0-9]*$ ]] || fail "crictl found no PID of ${pod}'s container ${cid} on ${node}"
  echo "${node} ${pid}"
}

signal_container() {  # signal_container POD SIGNAL: send SIGNAL (KILL, STOP) to the container's PID 1
  local where node pid
  where="$(container_pid "$1")"
  read -r node pid <<<"${where}"
  log "kill -$2 of $1's python (PID ${pid} on node ${node}; PID 1 in its container)"
  timeout 60 docker exec "${node}" sh -c "kill -$2 ${pid}"
  if [[ "$2" == "STOP" ]]; then
    WAIT_POLL_S=1 wait_until 10 "$1's process ${pid} to be stopped (State T)" \
      timeout 60 docker exec "${node}" grep -q '^State:[[:space:]]*T' "/proc/${pid}/status"
  fi
}

# (a) `kubectl delete pod`: a disruption, replaced at once and not counted against the restart budget.
inject_pod_delete() {
  local fault="pod delete" pod="${CHAOS_JOB}-embedding-server-0"
  before_fault "${fault}" 0
  log "fault 1/4, ${fault}: force-deleting ${pod} (uid $(uid_of "${BEFORE}" "${pod}"))"
  kubectl -n "${CHAOS_NAMESPACE}" delete pod "${pod}" --grace-period=0 --force --wait=false
  after_fault "${fault}" "Deleted" "${pod}"
}

# (b) a crash: the container's process killed with SIGKILL; the pod fails with exit code 137, a counted failure.
inject_container_crash() {
  local fault="container crash" pod="${CHAOS_JOB}-embedding-server-1"
  before_fault "${fault}" 1
  log "fault 2/4, ${fault}: SIGKILL to ${pod}'s container"
  signal_container "${pod}" KILL
  after_fault "${fault}" "ExitCode137" "${pod}"
}

# (c) a hang: the process stopped with SIGSTOP stays Running but stops heartbeating; the operator must declare it
# hung after recovery.heartbeatTimeoutSeconds (before the liveness probe would kill it) and replace it.
inject_hang() {
  local fault="hang" pod="${CHAOS_JOB}-embedding-server-0" timeout_s
  timeout_s="$(chaos_field '{.spec.recovery.heartbeatTimeoutSeconds}')"
  timeout_s="${timeout_s%.*}"
  [[ "${timeout_s}" =~ ^[0-9]+$ ]] || fail "${CHAOS_MANIFEST} sets no recovery.heartbeatTimeoutSeconds"
  before_fault "${fault}" 0
  log "fault 3/4, ${fault}: SIGSTOP to ${pod}'s container (heartbeatTimeoutSeconds ${timeout_s})"
  local stopped_at=${SECONDS}
  signal_container "${pod}" STOP
  # Polled every second: when the operator counts the hang tells a heartbeat timeout from anything sooner.
  WAIT_POLL_S=1 wait_until 120 "the operator to declare ${pod} hung" failures_reached $((EXPECTED_FAILURES + 1))
  local seen_after=$((SECONDS - stopped_at))
  # Heartbeats come every second: the earliest a silence of timeout_s can be seen is timeout_s - 1 after the stop.
  [[ "${seen_after}" -ge $((timeout_s - 2)) ]] \
    || fail "the hang was counted ${seen_after}s after the SIGSTOP, before the ${timeout_s}s heartbeat timeout"
  log "the hang was counted ${seen_after}s after the SIGSTOP (heartbeat timeout ${timeout_s}s)"
  after_fault "${fault}" "HeartbeatTimeout" "${pod}"
}

# (d) a node drain: every pod of the job on the worker running embedding-server-1 is evicted (disruptions, one
# failure each, not counted against the budget) and replaced on the other worker; the checkpoints are in MinIO,
# so the embedding server restores its shard there.
inject_node_drain() {
  local fault="node drain" es="${CHAOS_JOB}-embedding-server-1"
  before_fault "${fault}" 1
  local node victims
  node="$(node_of "${BEFORE}" "${es}")"
  [[ -n "${node}" && "${node}" != "-" ]] || fail "${es} runs on no node"
  read -r -a victims <<<"$(awk -v node="${node}" '$4 == node {printf "%s ", $1}' <<<"${BEFORE}")"
  log "fault 4/4, ${fault}: draining ${node}, which runs ${victims[*]}"
  kubectl drain "${node}" --ignore-daemonsets --delete-emptydir-data --force --timeout="${DRAIN_TIMEOUT_S}s"
  after_fault "${fault}" "${DISRUPTION_REASONS}" "${victims[@]}"
  local now victim
  now="$(job_pods "${CHAOS_NAMESPACE}" "${CHAOS_JOB}")"
  for victim in "${victims[@]}"; do
    [[ "$(node_of "${now}" "${victim}")" != "${node}" ]] || fail "${victim} was replaced on the drained node ${node}"
  done
  kubectl uncordon "${node}"
}

# The chaos job Succeeds, every failure injected is counted exactly once everywhere it is recorded, and every
# replaced embedding server restored a checkpoint.
finish_chaos_job() {
  wait_until "${JOB_TIMEOUT_S}" "${CHAOS_JOB} to succeed" job_succeeded "${CHAOS_NAMESPACE}" "${CHAOS_JOB}"
  kubectl -n "${CHAOS_NAMESPACE}" get tj -o wide
  local failures restarts stream samples target
  failures="$(chaos_failures)"
  [[ "${failures}" -eq "${EXPECTED_FAILURES}" ]] \
    || fail "status.recovery.failures is ${failures}, but ${EXPECTED_FAILURES} failures were injected"
  restarts="$(kubectl -n "${CHAOS_NAMESPACE}" get tj "${CHAOS_JOB}" -o json \
    | jq '[.status.replicas[]? | (.restarts // 0)] | add // 0')"
  [[ "${restarts}" -eq "${EXPECTED_FAILURES}" ]] \
    || fail "the replicas' restarts add up to ${restarts}, expected one per injected failure (${EXPECTED_FAILURES})"
  stream="$(redis XLEN "${KEY_PREFIX}failures")"
  [[ "${stream}" -eq "${EXPECTED_FAILURES}" ]] \
    || fail "Redis's failure stream ${KEY_PREFIX}failures has ${stream} entries, expected ${EXPECTED_FAILURES}"
  samples="$(chaos_samples)"
  target="$(chaos_target)"
  [[ "${samples}" -ge "${target}" ]] || fail "${CHAOS_JOB} Succeeded at ${samples} of ${target} samples"

  local entry replica uid shard replaced incarnations
  for entry in "${REPLACED_ES[@]}"; do
    read -r replica uid <<<"${entry}"
    assert_restored_checkpoint "${replica}" "${uid}"
  done
  for shard in 0 1; do
    replaced="$(printf '%s\n' "${REPLACED_ES[@]}" | grep -c "^embedding-server-${shard} " || true)"
    incarnations="$(redis HLEN "${KEY_PREFIX}recovery:embedding-server-${shard}")"
    [[ "${incarnations}" -eq $((replaced + 1)) ]] \
      || fail "embedding-server-${shard} has ${incarnations} recovery records, expected 1 + ${replaced} replacements"
    checkpoint_in_object_store "${shard}" || fail "embedding-server-${shard} has no checkpoint in the object store"
  done
  log "${CHAOS_JOB} Succeeded: ${failures} failures injected and recovered from, ${#REPLACED_ES[@]} embedding" \
      "server replacements, each restored from a checkpoint"
}

# --- Kueue ----------------------------------------------------------------------------------------

install_kueue() {
  log "installing Kueue ${KUEUE_VERSION}"
  kubectl apply --server-side \
    -f "https://github.com/kubernetes-sigs/kueue/releases/download/${KUEUE_VERSION}/manifests.yaml"
  kubectl -n kueue-system rollout status deployment/kueue-controller-manager --timeout="${KUEUE_TIMEOUT_S}s"
  # Kueue's webhooks serve a moment after the rollout (their certificates are generated at start).
  wait_until "${KUEUE_TIMEOUT_S}" "Kueue's webhooks to accept ${KUEUE_QUEUES_MANIFEST}" \
    kubectl apply -f "${KUEUE_QUEUES_MANIFEST}"
}

workload_field() {  # workload_field JSONPATH
  kubectl -n "${JOB_NAMESPACE}" get workloads.kueue.x-k8s.io "${WORKLOAD}" -o "jsonpath=${1}" 2>/dev/null || true
}

workload_condition() {  # workload_condition TYPE: its status (True, False, empty)
  workload_field "{.status.conditions[?(@.type==\"$1\")].status}"
}

workload_exists() { [[ -n "$(workload_field '{.metadata.uid}')" ]]; }
workload_is() { fail_if_job_failed "${JOB_NAMESPACE}" "${JOB_NAME}"; [[ "$(workload_condition "$1")" == "True" ]]; }

# Held by the queue: Suspended, no pods, the Workload not admitted.
job_held() {
  fail_if_job_failed "${JOB_NAMESPACE}" "${JOB_NAME}"
  [[ "$(tj_field "${JOB_NAMESPACE}" "${JOB_NAME}" '{.status.phase}')" == "Suspended" ]] || return 1
  [[ -z "$(job_pods "${JOB_NAMESPACE}" "${JOB_NAME}")" ]] || return 1
  [[ "$(workload_condition Admitted)" != "True" ]]
}

quota_released() {
  local cq
  cq="$(kubectl get clusterqueues.kueue.x-k8s.io "${CLUSTER_QUEUE}" -o json)"
  [[ "$(jq '(.status.admittedWorkloads // 0) + (.status.reservingWorkloads // 0)' <<<"${cq}")" -eq 0 ]]
}

run_queued_job() {
  log "queued job: ${JOB_MANIFEST} labelled ${QUEUE_LABEL}=${LOCAL_QUEUE} in namespace ${JOB_NAMESPACE}"
  kubectl create namespace "${JOB_NAMESPACE}"
  kubectl -n "${JOB_NAMESPACE}" create --dry-run=client -o json -f "${JOB_MANIFEST}" \
    | jq --arg key "${QUEUE_LABEL}" --arg queue "${LOCAL_QUEUE}" \
        '.metadata.labels = ((.metadata.labels // {}) + {($key): $queue})' \
    | kubectl -n "${JOB_NAMESPACE}" apply -f -

  # No LocalQueue yet: the operator must create the Workload and hold the job.
  wait_until "${KUEUE_TIMEOUT_S}" "the operator to create Workload ${WORKLOAD}" workload_exists
  local owner queue
  owner="$(workload_field '{.metadata.ownerReferences[?(@.controller==true)].kind}/{.metadata.ownerReferences[?(@.controller==true)].name}')"
  [[ "${owner}" == "TrainingJob/${JOB_NAME}" ]] || fail "Workload ${WORKLOAD} is owned by '${owner}', not TrainingJob/${JOB_NAME}"
  queue="$(workload_field '{.spec.queueName}')"
  [[ "${queue}" == "${LOCAL_QUEUE}" ]] || fail "Workload ${WORKLOAD} asks for queue '${queue}', not ${LOCAL_QUEUE}"
  wait_until "${KUEUE_TIMEOUT_S}" "${JOB_NAME} held Suspended with no pods while its LocalQueue is missing" job_held
  sleep "${HOLD_CHECK_S}"
  job_held || fail "${JOB_NAME} did not stay held for ${HOLD_CHECK_S}s without a LocalQueue (started before admission?)"
  log "${JOB_NAME} held: $(tj_field "${JOB_NAMESPACE}" "${JOB_NAME}" '{.status.conditions[?(@.type=="Suspended")].message}')"

  kubectl -n "${JOB_NAMESPACE}" apply -f "${LOCAL_QUEUE_MANIFEST}"
  wait_until "${KUEUE_TIMEOUT_S}" "Kueue to admit Workload ${WORKLOAD}" workload_is Admitted
  wait_until "${PODS_RUNNING_TIMEOUT_S}" "${EXPECTED_PODS} running pods of ${JOB_NAME} after admission" \
    pods_running "${JOB_NAMESPACE}" "${JOB_NAME}"
  # The admitted pods carry the flavor's nodeLabels in their node selector.
  local unplaced
  unplaced="$(kubectl -n "${JOB_NAMESPACE}" get pods -l "training.cpr.dev/job=${JOB_NAME}" -o json \
    | jq -r --arg key "${FLAVOR_LABEL_KEY}" --arg value "${FLAVOR_LABEL_VALUE}" \
        '.items[] | select(.spec.nodeSelector[$key] != $value) | .metadata.name')"
  [[ -z "${unplaced}" ]] || fail "pods without the flavor's node selector ${FLAVOR_LABEL_KEY}=${FLAVOR_LABEL_VALUE}: ${unplaced}"

  wait_until "${JOB_TIMEOUT_S}" "${JOB_NAME} to succeed" job_succeeded "${JOB_NAMESPACE}" "${JOB_NAME}"
  wait_until "${KUEUE_TIMEOUT_S}" "Workload ${WORKLOAD} to be Finished=True" workload_is Finished
  wait_until "${KUEUE_TIMEOUT_S}" "ClusterQueue ${CLUSTER_QUEUE} to release ${WORKLOAD}'s quota" quota_released
  kubectl -n "${JOB_NAMESPACE}" get tj,workloads.kueue.x-k8s.io -o wide
  log "${JOB_NAME} was held, admitted by Kueue, Succeeded, and its Workload is Finished"
}

# --- the pytorch workload ----------------------------------------------------------------------------

pytorch_step() { number_or_zero "$(tj_field "${PYTORCH_NAMESPACE}" "${PYTORCH_JOB}" '{.status.progress.step}')"; }

pytorch_past() {  # pytorch_past STEP
  fail_if_job_failed "${PYTORCH_NAMESPACE}" "${PYTORCH_JOB}"
  (($(pytorch_step) >= $1))
}

workers_running() {
  local listing
  fail_if_job_failed "${PYTORCH_NAMESPACE}" "${PYTORCH_JOB}"
  listing="$(job_pods "${PYTORCH_NAMESPACE}" "${PYTORCH_JOB}")"
  [[ $(grep -c . <<<"${listing}") -eq 2 && -z "$(awk '$3 != "Running"' <<<"${listing}")" ]]
}

run_pytorch_job() {
  local before survivor victim resumes accuracy key="tj:${PYTORCH_NAMESPACE}:${PYTORCH_JOB}:"
  log "pytorch workload: ${PYTORCH_MANIFEST} in ${PYTORCH_NAMESPACE}"
  kubectl create namespace "${PYTORCH_NAMESPACE}"
  kubectl -n "${PYTORCH_NAMESPACE}" apply -f "${PYTORCH_MANIFEST}"
  wait_until "${PODS_RUNNING_TIMEOUT_S}" "2 worker pods Running" workers_running
  wait_until "${THRESHOLD_TIMEOUT_S}" "step ${PYTORCH_DELETE_AT_STEP}" pytorch_past "${PYTORCH_DELETE_AT_STEP}"
  before="$(job_pods "${PYTORCH_NAMESPACE}" "${PYTORCH_JOB}")"
  survivor="$(uid_of "${before}" "${PYTORCH_JOB}-worker-0")"
  victim="$(uid_of "${before}" "${PYTORCH_JOB}-worker-1")"
  log "deleting ${PYTORCH_JOB}-worker-1 (uid ${victim}) at step $(pytorch_step)"
  kubectl -n "${PYTORCH_NAMESPACE}" delete pod "${PYTORCH_JOB}-worker-1" --wait=false
  wait_until "${JOB_TIMEOUT_S}" "${PYTORCH_JOB} to Succeed" job_succeeded "${PYTORCH_NAMESPACE}" "${PYTORCH_JOB}"
  local after
  after="$(job_pods "${PYTORCH_NAMESPACE}" "${PYTORCH_JOB}")"
  [[ "$(uid_of "${after}" "${PYTORCH_JOB}-worker-0")" == "${survivor}" ]] \
    || fail "worker-0's pod was recreated (uid ${survivor} -> $(uid_of "${after}" "${PYTORCH_JOB}-worker-0"))"
  [[ -n "$(uid_of "${after}" "${PYTORCH_JOB}-worker-1")" && "$(uid_of "${after}" "${PYTORCH_JOB}-worker-1")" != "${victim}" ]] \
    || fail "worker-1 was not replaced by a new pod"
  resumes="$(redis HVALS "${key}resumes" | jq -s '[.[] | select(.generation > 0 and (.resumed_from // 0) > 0)] | length')"
  ((resumes >= 1)) || fail "no generation after the delete resumed from a checkpoint (resumes: ${resumes})"
  accuracy="$(kubectl -n "${PYTORCH_NAMESPACE}" get tj "${PYTORCH_JOB}" -o json | jq -r '.status.progress.result.thinking_on')"
  jq -en --argjson a "${accuracy}" --argjson min "${PYTORCH_MIN_ACCURACY}" '$a >= $min' >/dev/null \
    || fail "held-out accuracy with thinking on is ${accuracy}, expected at least ${PYTORCH_MIN_ACCURACY}"
  kubectl -n "${PYTORCH_NAMESPACE}" get tj "${PYTORCH_JOB}" -o jsonpath='{.status.progress.result}'; echo
  log "${PYTORCH_JOB}: worker-1 alone was replaced, worker-0 restarted in place, the job Succeeded"
}

main() {
  case "${1:-}" in
    "") ;;
    --cleanup)
      kind delete cluster --name "${CLUSTER_NAME}"
      rm -f "${KUBECONFIG}"
      return 0 ;;
    -h|--help) usage; rm -f "${KUBECONFIG}"; return 0 ;;
    *) usage; rm -f "${KUBECONFIG}"; fail "unknown argument: $1" ;;
  esac
  require_tools
  # Checked before the trap is set: the cleanup must not delete a cluster this run did not create.
  if cluster_exists; then
    rm -f "${KUBECONFIG}"
    fail "a kind cluster ${CLUSTER_NAME} exists already (left by KEEP_CLUSTER=1?): ./e2e/run.sh --cleanup deletes it"
  fi
  trap cleanup EXIT
  mkdir -p "${ARTIFACTS}"
  create_cluster
  build_and_load_images
  install_chart

  start_chaos_job
  inject_pod_delete
  inject_container_crash
  inject_hang
  inject_node_drain
  finish_chaos_job

  install_kueue
  run_queued_job

  run_pytorch_job
}

main "$@"
