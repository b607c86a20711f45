#!/usr/bin/env bash
# End-to-end test of the TrainingJob operator on a kind cluster.
#
#   1. create a kind cluster (temporary KUBECONFIG: yours is never touched);
#   2. build the operator and trainer images with docker and `kind load` them;
#   3. helm install charts/trainingjob-operator (2 operator replicas with kopf peering, bundled Redis);
#   4. apply examples/dlrm-kind.yaml and wait until all its pods run and training makes progress;
#   5. force-delete one embedding-server pod and assert that only that pod is replaced: every other
#      pod of the job keeps its UID (CPR partial recovery, no restart of the survivors);
#   6. wait for phase Succeeded, print `kubectl get tj`, check that the failure was recorded;
#   7. always save logs and descriptions under $ARTIFACTS, then delete the cluster.
#
# Needs docker, kind, kubectl, helm and jq. Knobs (environment): CLUSTER_NAME, KIND_NODE_IMAGE,
# ARTIFACTS, KEEP_CLUSTER=1 (leave the cluster up), SKIP_BUILD=1 (reuse the images), and the
# *_TIMEOUT_S values below.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_NAME="${CLUSTER_NAME:-tj-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
ARTIFACTS="${ARTIFACTS:-${REPO_ROOT}/e2e/artifacts}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"

OPERATOR_IMAGE_REPO="trainingjob-operator"
TRAINER_IMAGE_REPO="dlrm-trainer"
IMAGE_TAG="e2e"  # examples/dlrm-kind.yaml names dlrm-trainer:e2e
REDIS_IMAGE="docker.io/library/redis:7.2-alpine"  # the chart's default, preloaded to avoid pulls

RELEASE="tj"
OPERATOR_NAMESPACE="tj-system"
JOB_NAMESPACE="tj-e2e"
JOB_MANIFEST="${REPO_ROOT}/examples/dlrm-kind.yaml"
JOB_NAME="dlrm-kind"
EXPECTED_PODS=5  # 2 trainers + 2 embedding servers + 1 sync server

HELM_TIMEOUT="${HELM_TIMEOUT:-5m}"
PODS_RUNNING_TIMEOUT_S="${PODS_RUNNING_TIMEOUT_S:-600}"
PROGRESS_TIMEOUT_S="${PROGRESS_TIMEOUT_S:-300}"
REPLACEMENT_TIMEOUT_S="${REPLACEMENT_TIMEOUT_S:-300}"
JOB_TIMEOUT_S="${JOB_TIMEOUT_S:-1200}"

KUBECONFIG="$(mktemp "${TMPDIR:-/tmp}/tj-e2e-kubeconfig.XXXXXX")"
export KUBECONFIG

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

require_tools() {
  local tool
  for tool in docker kind kubectl helm jq; do
    command -v "${tool}" >/dev/null || fail "${tool} is not installed"
  done
}

# Save what is needed to debug a run: job and operator state, pod logs, events, node logs.
collect_artifacts() {
  mkdir -p "${ARTIFACTS}"
  log "saving logs and descriptions to ${ARTIFACTS}"
  kubectl get tj -A -o yaml >"${ARTIFACTS}/trainingjobs.yaml" 2>&1 || true
  kubectl get pods -A -o wide >"${ARTIFACTS}/pods.txt" 2>&1 || true
  kubectl get events -A --sort-by=.lastTimestamp >"${ARTIFACTS}/events.txt" 2>&1 || true
  local ns pod
  for ns in "${OPERATOR_NAMESPACE}" "${JOB_NAMESPACE}"; do
    kubectl -n "${ns}" describe pods >"${ARTIFACTS}/describe-pods-${ns}.txt" 2>&1 || true
    for pod in $(kubectl -n "${ns}" get pods -o name 2>/dev/null); do
      kubectl -n "${ns}" logs "${pod}" --all-containers --timestamps \
        >"${ARTIFACTS}/logs-${ns}-${pod#pod/}.txt" 2>&1 || true
      kubectl -n "${ns}" logs "${pod}" --all-containers --timestamps --previous \
        >"${ARTIFACTS}/logs-${ns}-${pod#pod/}-previous.txt" 2>/dev/null || true
    done
  done
  kubectl get clusterkopfpeerings -o yaml >"${ARTIFACTS}/kopf-peerings.yaml" 2>&1 || true
  kind export logs "${ARTIFACTS}/kind" --name "${CLUSTER_NAME}" >/dev/null 2>&1 || true
}

cleanup() {
  local rc=$?
  trap - EXIT
  if kind get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; then
    collect_artifacts
    if [[ "${KEEP_CLUSTER}" == "1" ]]; then
      log "KEEP_CLUSTER=1: cluster ${CLUSTER_NAME} left running (KUBECONFIG=${KUBECONFIG})"
    else
      kind delete cluster --name "${CLUSTER_NAME}" >/dev/null 2>&1 || true
      rm -f "${KUBECONFIG}"
    fi
  fi
  if [[ ${rc} -eq 0 ]]; then log "PASS"; else log "FAILED with exit code ${rc}; artifacts in ${ARTIFACTS}"; fi
  exit "${rc}"
}

# wait_until TIMEOUT_S DESCRIPTION COMMAND...: rerun COMMAND every 5 s until it succeeds.
wait_until() {
  local timeout_s=$1 what=$2
  shift 2
  local deadline=$((SECONDS + timeout_s))
  log "waiting up to ${timeout_s}s for ${what}"
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out after ${timeout_s}s waiting for ${what}"
    sleep 5
  done
}

job_field() {  # job_field JSONPATH: one field of the TrainingJob, empty when unset
  kubectl -n "${JOB_NAMESPACE}" get tj "${JOB_NAME}" -o "jsonpath=${1}" 2>/dev/null || true
}

fail_if_job_failed() {
  if [[ "$(job_field '{.status.phase}')" == "Failed" ]]; then
    kubectl -n "${JOB_NAMESPACE}" get tj "${JOB_NAME}" -o yaml >&2 || true
    fail "TrainingJob ${JOB_NAME} is Failed"
  fi
}

# "name uid phase" of every live pod the TrainingJob owns, sorted by name.
job_pods() {
  kubectl -n "${JOB_NAMESPACE}" get pods -o json | jq -r --arg job "${JOB_NAME}" '
    .items[]
    | select(any(.metadata.ownerReferences[]?; .kind == "TrainingJob" and .name == $job))
    | select(.metadata.deletionTimestamp == null)
    | "\(.metadata.name) \(.metadata.uid) \(.status.phase)"' | sort
}

all_pods_running() {
  fail_if_job_failed
  local pods
  pods="$(job_pods)"
  [[ $(grep -c . <<<"${pods}") -eq ${EXPECTED_PODS} ]] && ! grep -qv ' Running$' <<<"${pods}"
}

training_progressed() {
  fail_if_job_failed
  local samples
  samples="$(job_field '{.status.progress.samples}')"
  [[ "${samples:-0}" =~ ^[0-9]+$ && "${samples:-0}" -gt 0 ]]
}

# True once a pod with a UID that was not there before the kill has replaced the victim.
replacement_running() {
  fail_if_job_failed
  local after
  after="$(job_pods)"
  [[ $(grep -c . <<<"${after}") -eq ${EXPECTED_PODS} ]] || return 1
  grep -v -F -f <(awk '{print $2}' <<<"${BEFORE}") <<<"${after}" | grep -q ' Running$'
}

job_finished() {
  fail_if_job_failed
  [[ "$(job_field '{.status.phase}')" == "Succeeded" ]]
}

create_cluster() {
  log "creating kind cluster ${CLUSTER_NAME}"
  local args=(create cluster --name "${CLUSTER_NAME}" --config "${REPO_ROOT}/e2e/kind-config.yaml"
              --kubeconfig "${KUBECONFIG}" --wait 120s)
  [[ -n "${KIND_NODE_IMAGE}" ]] && args+=(--image "${KIND_NODE_IMAGE}")
  kind "${args[@]}"
}

build_and_load_images() {
  if [[ "${SKIP_BUILD}" != "1" ]]; then
    log "building images"
    docker build -f "${REPO_ROOT}/operator/Dockerfile" -t "${OPERATOR_IMAGE_REPO}:${IMAGE_TAG}" "${REPO_ROOT}"
    docker build -f "${REPO_ROOT}/trainer_image/Dockerfile" -t "${TRAINER_IMAGE_REPO}:${IMAGE_TAG}" "${REPO_ROOT}"
  fi
  docker image inspect "${REDIS_IMAGE}" >/dev/null 2>&1 || docker pull "${REDIS_IMAGE}"
  log "loading images into kind"
  kind load docker-image --name "${CLUSTER_NAME}" \
    "${OPERATOR_IMAGE_REPO}:${IMAGE_TAG}" "${TRAINER_IMAGE_REPO}:${IMAGE_TAG}" "${REDIS_IMAGE}"
}

install_chart() {
  log "installing the chart (release ${RELEASE} in ${OPERATOR_NAMESPACE})"
  helm upgrade --install "${RELEASE}" "${REPO_ROOT}/charts/trainingjob-operator" \
    --namespace "${OPERATOR_NAMESPACE}" --create-namespace \
    --set operator.image.repository="${OPERATOR_IMAGE_REPO}" \
    --set operator.image.tag="${IMAGE_TAG}" \
    --set operator.image.pullPolicy=Never \
    --set trainer.image.repository="${TRAINER_IMAGE_REPO}" \
    --set trainer.image.tag="${IMAGE_TAG}" \
    --wait --timeout "${HELM_TIMEOUT}"
  kubectl get crd trainingjobs.training.cpr.dev >/dev/null
  kubectl -n "${OPERATOR_NAMESPACE}" get pods -o wide
}

main() {
  require_tools
  trap cleanup EXIT
  mkdir -p "${ARTIFACTS}"
  create_cluster
  build_and_load_images
  install_chart

  log "applying ${JOB_MANIFEST} to namespace ${JOB_NAMESPACE}"
  kubectl create namespace "${JOB_NAMESPACE}"
  kubectl -n "${JOB_NAMESPACE}" apply -f "${JOB_MANIFEST}"

  wait_until "${PODS_RUNNING_TIMEOUT_S}" "${EXPECTED_PODS} running pods of ${JOB_NAME}" all_pods_running
  wait_until "${PROGRESS_TIMEOUT_S}" "training progress in ${JOB_NAME}'s status" training_progressed
  [[ "$(job_field '{.status.phase}')" != "Succeeded" ]] \
    || fail "${JOB_NAME} finished before a fault could be injected: raise data.trainSamples"

  BEFORE="$(job_pods)"
  log "pods before the fault:"$'\n'"${BEFORE}"
  local victim
  victim="$(awk '$1 ~ /embedding-server/ {print $1; exit}' <<<"${BEFORE}")"
  [[ -n "${victim}" ]] || fail "no embedding-server pod among the job's pods"
  local victim_uid
  victim_uid="$(awk -v pod="${victim}" '$1 == pod {print $2}' <<<"${BEFORE}")"
  log "force-deleting ${victim} (uid ${victim_uid})"
  kubectl -n "${JOB_NAMESPACE}" delete pod "${victim}" --grace-period=0 --force --wait=false

  wait_until "${REPLACEMENT_TIMEOUT_S}" "a replacement for ${victim}" replacement_running
  local after
  after="$(job_pods)"
  log "pods after the replacement:"$'\n'"${after}"
  # Every survivor keeps its UID; exactly one UID is new; the victim's UID is gone.
  local name uid phase
  while read -r name uid phase; do
    [[ "${uid}" == "${victim_uid}" ]] && continue
    grep -q -F " ${uid} " <<<"${after}" || fail "${name} (uid ${uid}, ${phase}) was replaced too: only ${victim} may be"
  done <<<"${BEFORE}"
  grep -q -F " ${victim_uid} " <<<"${after}" && fail "${victim} still has its old uid ${victim_uid}"
  local new_pods
  new_pods="$(grep -v -F -f <(awk '{print $2}' <<<"${BEFORE}") <<<"${after}" || true)"
  [[ $(grep -c . <<<"${new_pods}") -eq 1 ]] || fail "expected exactly one new pod, got:"$'\n'"${new_pods}"
  log "only ${victim} was replaced: ${new_pods}"

  wait_until "${JOB_TIMEOUT_S}" "${JOB_NAME} to succeed" job_finished
  kubectl -n "${JOB_NAMESPACE}" get tj -o wide
  local failures
  failures="$(job_field '{.status.recovery.failures}')"
  [[ "${failures:-0}" -ge 1 ]] || fail "status.recovery.failures is '${failures}', expected the killed pod to be counted"
  log "recorded failures: ${failures}; last: $(job_field '{.status.recovery.lastFailure}')"
}

main "$@"
