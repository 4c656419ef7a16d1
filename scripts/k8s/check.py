"""Renders deploy/k8s and checks what the manifests promise. Run through scripts/k8s-check.

1. `kubectl kustomize` of the base and of every overlay, plus the example files.
2. Every core object validated in strict mode (unknown fields are errors) against the
   OpenAPI schemas of the Kubernetes releases in KUBERNETES_VERSIONS (kubernetes-validate).
3. Gateway API and Prometheus Operator objects validated against the JSON schemas that the
   @kubernetes-models npm packages publish (validate-crds.mjs), plus the checks below.
4. Cross-object checks: selectors, named ports, probes, security settings and the image's
   uid, grace period against the stop deadline, HPA against database connections, the
   migration Job per release, Secret keys against the *_FILE settings, the PrometheusRule
   equal to deploy/prometheus/alerts.yaml.

`--write` regenerates components/monitoring/prometheusrule.yaml from alerts.yaml.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
import kubernetes_validate

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE = K8S / "components" / "monitoring" / "prometheusrule.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# The newest release kubernetes-validate knows, and an older one still in wide use.
KUBERNETES_VERSIONS = [kubernetes_validate.latest_version(), "1.31.0"]
RENDERS = {
    "base": K8S / "base",
    "production": K8S / "overlays" / "production",
}
EXAMPLES = [K8S / "examples" / "secret.yaml", K8S / "examples" / "ingress.yaml"]
CRD_GROUPS = ("gateway.networking.k8s.io", "monitoring.coreos.com")
# PostgreSQL's default max_connections, less superuser_reserved_connections (3) and a
# margin for operators, monitoring and the odd psql (10).
PG_CONNECTIONS_AVAILABLE = 100 - 3 - 10

failures = []
passed = 0


def check(cond, what):
    global passed
    if cond:
        passed += 1
    else:
        failures.append(what)
        print(f"  FAIL {what}")


# --- the PrometheusRule, generated from alerts.yaml ------------------------------------

RULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by `scripts/k8s-check --write`; do not edit.
# scripts/k8s-check fails when the two differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: media-node
  labels:
    app.kubernetes.io/name: media-node
spec:
"""


def generated_rule() -> str:
    lines = ALERTS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = ["  " + line if line.strip() else "" for line in lines[start:]]
    return RULE_HEADER + "\n".join(body).rstrip() + "\n"


# --- rendering ---------------------------------------------------------------------------


def render(path: Path):
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def group_of(obj):
    api = obj.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def by_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


def one(objs, kind, name=None):
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    check(len(found) == 1, f"exactly one {kind}{' ' + name if name else ''}")
    return found[0] if found else {}


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def duration_seconds(text: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


# --- schemas -----------------------------------------------------------------------------


def validate_core(label, objs):
    for obj in objs:
        if group_of(obj) in CRD_GROUPS:
            continue
        ok = []
        for version in KUBERNETES_VERSIONS:
            name = f"{label}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}, strict)"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                check(True, name)
                ok.append(version)
            except Exception as err:  # ValidationError, SchemaNotFoundError
                check(False, f"{name}: {getattr(err, 'message', err)}")
        if ok:
            print(f"  valid {obj['apiVersion']} {obj['kind']}/{obj['metadata']['name']}: Kubernetes {', '.join(ok)} (strict)")


def validate_crds(label, objs, node_modules):
    crds = [o for o in objs if group_of(o) in CRD_GROUPS]
    if not crds:
        return []
    out = subprocess.run(
        ["node", str(Path(__file__).with_name("validate-crds.mjs")), node_modules],
        input=json.dumps(crds),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"validate-crds.mjs failed:\n{out.stderr}")
    results = json.loads(out.stdout)
    for res in results:
        if not res["errors"]:
            print(f"  valid {res['kind']}/{res['name']}: {res['schema']} (+ field names)")
        check(not res["errors"], f"{label}: {res['kind']}/{res['name']} against {res['schema']}"
              + (f": {res['errors']}" if res["errors"] else ""))
    return results


# --- what the manifests promise ----------------------------------------------------------


def image_uid():
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.M)
    check(len(users) >= 1, "deploy/Dockerfile sets USER")
    user = users[-1].split(":")
    check(user[0].isdigit() and int(user[0]) > 0, "the image's USER is a numeric non-root uid")
    return int(user[0]), int(user[1]) if len(user) > 1 else None


def check_dockerfile():
    """The image's build stays in step with Cargo.toml."""
    import tomllib

    print("deploy/Dockerfile: checks")
    text = DOCKERFILE.read_text()
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    for bench in cargo.get("bench", []):
        path = bench.get("path", f"benches/{bench['name']}.rs")
        check(f"> {path}" in text, f"the dependency layer has a stub for the bench {path}")
    check(re.search(r"^COPY src \./src$", text, re.M) and re.search(r"^COPY migrations ", text, re.M)
          and re.search(r"^COPY config ", text, re.M), "the build copies src, migrations and config")
    check(not re.search(r"^COPY (tests|target|data|\.)\b", text, re.M), "the build copies no tests, target or data")
    builds = re.findall(r"cargo build [^\n]*", text)
    check(len(builds) == 2 and all("--locked" in b and "--bin media-node" in b for b in builds),
          "both builds are --locked --bin media-node (dependencies, then the crate)")
    check(text.index("COPY Cargo.toml Cargo.lock") < text.index(builds[0]) < text.index("COPY src"),
          "dependencies build before the sources are copied")


def check_rendered(label, objs, overlay):
    print(f"{label}: cross-object checks")
    deploy = one(objs, "Deployment", "media-node")
    spec = deploy.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    pod_labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    check("replicas" not in spec, "Deployment has no replicas field (the HPA owns it)")
    check(selects(spec.get("selector", {}).get("matchLabels", {}), pod_labels),
          "Deployment selector matches its pods")
    containers = pod.get("containers", [])
    check(len(containers) == 1, "one container")
    c = containers[0] if containers else {}
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(ports == {"http": 8080, "admin": 9090}, "ports: http 8080, admin 9090")

    # Probes on the admin port.
    live = c.get("livenessProbe", {}).get("httpGet", {})
    ready = c.get("readinessProbe", {}).get("httpGet", {})
    check(live.get("path") == "/livez" and ports.get(live.get("port"), live.get("port")) == 9090,
          "liveness probe GET /livez on the admin port")
    check(ready.get("path") == "/readyz" and ports.get(ready.get("port"), ready.get("port")) == 9090,
          "readiness probe GET /readyz on the admin port")

    # Configuration from the ConfigMap, secrets as files from the Secret.
    cm_refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    cms = {o["metadata"]["name"]: o for o in by_kind(objs, "ConfigMap")}
    check(len(cm_refs) == 1 and cm_refs[0] in cms, "the container's ConfigMap is rendered")
    env = cms.get(cm_refs[0], {}).get("data", {}) if cm_refs else {}
    check(env.get("APP_ENV") == "production", "APP_ENV=production")
    check(all(k == "APP_ENV" or k.startswith("MEDIA_NODE__") for k in env),
          "the ConfigMap holds only APP_ENV and MEDIA_NODE__* settings")
    secret_keys = ("HS256_SECRET", "URL_SIGNING_SECRET", "PASSWORD", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY")
    check(not [k for k in env if k.endswith(secret_keys)], "no secret value in the ConfigMap (only *_FILE paths)")
    check(not re.match(r"postgres(ql)?://[^/@]*:[^/@]*@", str(env.get("MEDIA_NODE__DATABASE__URL", ""))),
          "no password in the ConfigMap's database URL")
    check(str(env.get("MEDIA_NODE__SERVER__PORT")) == "8080", "public port 8080 in the ConfigMap")
    check(str(env.get("MEDIA_NODE__ADMIN__PORT")) == "9090", "admin port 9090 in the ConfigMap")

    # Security settings, and the image's own uid.
    uid, gid = image_uid()
    psc = pod.get("securityContext", {})
    csc = c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot") is True, "runAsNonRoot")
    check(psc.get("runAsUser") == uid and csc.get("runAsUser") in (None, uid),
          f"runAsUser is the image's uid {uid}")
    check(gid is None or psc.get("runAsGroup") == gid, f"runAsGroup is the image's gid {gid}")
    check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"] and not csc.get("capabilities", {}).get("add"),
          "all capabilities dropped, none added")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
    check(pod.get("automountServiceAccountToken") is False, "no API token mounted in the pod")

    # Writable paths: only emptyDirs, and only /tmp.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        vol = volumes.get(m["name"], {})
        if "emptyDir" in vol:
            check(m["mountPath"] == "/tmp" and vol["emptyDir"].get("sizeLimit"),
                  f"emptyDir {m['mountPath']} is /tmp with a size limit")
        else:
            check(m.get("readOnly") is True, f"{m['mountPath']} is mounted read-only")

    # Secret keys: every *_FILE setting points at a key of the mounted Secret.
    secret_vols = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    mounts = {m["mountPath"]: secret_vols[m["name"]] for m in c.get("volumeMounts", []) if m["name"] in secret_vols}
    example = next(o for o in yaml.safe_load_all((K8S / "examples" / "secret.yaml").read_text()) if o)
    example_keys = set(example.get("stringData", {})) | set(example.get("data", {}))
    for key, path in env.items():
        if not key.endswith("_FILE"):
            continue
        directory, _, file = str(path).rpartition("/")
        check(mounts.get(directory) == example["metadata"]["name"] and file in example_keys,
              f"{key} names key {file} of the Secret {example['metadata']['name']}")

    # The stop deadline fits in the grace period.
    stop = duration_seconds(str(env.get("MEDIA_NODE__SERVER__DRAIN_DELAY", "5s"))) + \
        duration_seconds(str(env.get("MEDIA_NODE__SERVER__SHUTDOWN_TIMEOUT", "30s")))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace > stop, f"terminationGracePeriodSeconds {grace} > drain_delay + shutdown_timeout {stop:g}")

    # Resources: memory request = limit, and room for the upload budget (256 MiB).
    res = c.get("resources", {})
    mem_req, mem_lim = res.get("requests", {}).get("memory"), res.get("limits", {}).get("memory")
    check(mem_req is not None and mem_req == mem_lim, "memory request = limit")
    mib = int(re.fullmatch(r"(\d+)Mi", mem_lim or "0Mi").group(1)) if mem_lim and mem_lim.endswith("Mi") else 0
    check(mib >= 256 + 64, "memory limit covers the 256 MiB upload budget and the idle process")
    check("cpu" in res.get("requests", {}), "a CPU request (the HPA scales on it)")

    # Topology spread over nodes and zones.
    keys = {t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])
            if selects(t.get("labelSelector", {}).get("matchLabels", {}), pod_labels)}
    check({"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys,
          "spread over nodes and zones")

    # ServiceAccount.
    sa = one(objs, "ServiceAccount", pod.get("serviceAccountName"))
    check(sa.get("automountServiceAccountToken") is False, "the ServiceAccount mounts no token")

    # Services.
    services = {o["metadata"]["name"]: o for o in by_kind(objs, "Service")}
    for name, port_name in (("media-node", "http"), ("media-node-admin", "admin")):
        svc = services.get(name, {})
        check(selects(svc.get("spec", {}).get("selector", {}), pod_labels), f"Service {name} selects the pods")
        targets = [p.get("targetPort") for p in svc.get("spec", {}).get("ports", [])]
        check(targets == [port_name], f"Service {name} targets only the {port_name} port")

    # HPA, and the database connections it may open.
    hpa = one(objs, "HorizontalPodAutoscaler", "media-node")
    hspec = hpa.get("spec", {})
    check(hspec.get("scaleTargetRef", {}).get("name") == "media-node"
          and hspec.get("scaleTargetRef", {}).get("kind") == "Deployment", "the HPA scales the Deployment")
    check(hspec.get("minReplicas", 0) >= 3, "HPA minimum at least 3")
    pool = int(env.get("MEDIA_NODE__DATABASE__MAX_CONNECTIONS", 20))
    surge = spec.get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1)
    check(isinstance(surge, int), "maxSurge is a number of pods (counted in connections)")
    jobs = [o for o in by_kind(objs, "Job") if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "migrate"]
    job_pool = 0
    for job in jobs:
        for e in job["spec"]["template"]["spec"]["containers"][0].get("env", []):
            if e["name"] == "MEDIA_NODE__DATABASE__MAX_CONNECTIONS":
                job_pool = int(e["value"])
    connections = (hspec.get("maxReplicas", 0) + (surge if isinstance(surge, int) else 1)) * pool + (job_pool or pool)
    print(f"  database connections at most: ({hspec.get('maxReplicas')} + {surge}) x {pool} + {job_pool or pool} = {connections}")
    check(connections <= PG_CONNECTIONS_AVAILABLE,
          f"HPA max x pool fits PostgreSQL's default connections ({connections} <= {PG_CONNECTIONS_AVAILABLE})")

    # PDB.
    pdb = one(objs, "PodDisruptionBudget", "media-node")
    check(selects(pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}), pod_labels), "the PDB selects the pods")

    # NetworkPolicy: public port open, admin only from the monitoring namespace.
    np = one(objs, "NetworkPolicy", "media-node")
    npspec = np.get("spec", {})
    check(selects(npspec.get("podSelector", {}).get("matchLabels", {}), pod_labels), "the NetworkPolicy selects the pods")
    rules = npspec.get("ingress", [])
    open_ports = [p["port"] for r in rules if not r.get("from") for p in r.get("ports", [])]
    admin_rules = [r for r in rules if any(p["port"] in ("admin", 9090) for p in r.get("ports", []))]
    check(open_ports == ["http"] or open_ports == [8080], "only the public port is open to all")
    check(len(admin_rules) == 1 and admin_rules[0].get("from") == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "the admin port only from the monitoring namespace")

    # The migration Job: one per release, same image and configuration as the Deployment.
    check(len(jobs) == 1, "one migration Job")
    for job in jobs:
        jc = job["spec"]["template"]["spec"]["containers"][0]
        tag = c.get("image", "").rpartition(":")[2]
        check(job["metadata"]["name"] == f"media-node-migrate-{tag}", f"the Job is named after the image tag ({job['metadata']['name']})")
        check(jc.get("image") == c.get("image"), "the Job runs the Deployment's image")
        check(jc.get("args") == ["migrate"] and jc.get("command") == c.get("command"), "the Job runs `media-node migrate`")
        check([e["configMapRef"]["name"] for e in jc.get("envFrom", [])] == cm_refs, "the Job reads the same ConfigMap")
        jsc = jc.get("securityContext", {})
        check(jsc.get("readOnlyRootFilesystem") is True and jsc.get("capabilities", {}).get("drop") == ["ALL"]
              and jsc.get("allowPrivilegeEscalation") is False, "the Job is as restricted as the Deployment")
        check(job["metadata"].get("labels", {}).get("media-node/apply-first") == "true", "the Job is applied first")
    for name in cm_refs:
        check(cms[name]["metadata"].get("labels", {}).get("media-node/apply-first") == "true",
              "the ConfigMap is applied with the Job")

    if not overlay:
        check(not [o for o in objs if group_of(o) in CRD_GROUPS], "the base needs no CRDs")
        return

    # Overlay: namespace, pod security, monitoring and the way in.
    ns = one(objs, "Namespace")
    check(ns.get("metadata", {}).get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted",
          "the namespace enforces the restricted pod security standard")
    check(all(o["metadata"].get("namespace") == ns["metadata"]["name"] for o in objs if o["kind"] != "Namespace"),
          "every object is in the namespace")
    check(ns.get("metadata", {}).get("labels", {}).get("media-node/apply-first") == "true", "the namespace is applied first")

    sm = one(objs, "ServiceMonitor", "media-node")
    admin = services.get("media-node-admin", {})
    check(selects(sm.get("spec", {}).get("selector", {}).get("matchLabels", {}), admin.get("metadata", {}).get("labels", {}))
          and not selects(sm.get("spec", {}).get("selector", {}).get("matchLabels", {}),
                          services.get("media-node", {}).get("metadata", {}).get("labels", {})),
          "the ServiceMonitor selects the admin Service only")
    eps = sm.get("spec", {}).get("endpoints", [])
    check([(e.get("port"), e.get("path")) for e in eps] == [("admin", "/metrics")], "scraped: admin port, /metrics")

    pr = one(objs, "PrometheusRule", "media-node")
    alerts = yaml.safe_load(ALERTS.read_text())
    check(pr.get("spec", {}).get("groups") == alerts["groups"],
          "the PrometheusRule's groups equal deploy/prometheus/alerts.yaml")

    route = one(objs, "HTTPRoute", "media-node")
    refs = [b for r in route.get("spec", {}).get("rules", []) for b in r.get("backendRefs", [])]
    check(refs and all(b["name"] == "media-node" and b["port"] == 8080 for b in refs),
          "the HTTPRoute sends traffic to the public Service only")


def check_examples(objs):
    print("examples: checks")
    secret = one(objs, "Secret")
    values = list(secret.get("stringData", {}).values()) + list(secret.get("data", {}).values())
    check(values and all("CHANGE-ME" in str(v) for v in values), "the Secret example holds placeholders only")
    ingress = one(objs, "Ingress")
    backends = [p["backend"]["service"] for r in ingress.get("spec", {}).get("rules", [])
                for p in r["http"]["paths"]]
    check(backends and all(b["name"] == "media-node" and b["port"] in ({"number": 8080}, {"name": "http"})
                           for b in backends), "the Ingress sends traffic to the public Service only")
    ann = ingress.get("metadata", {}).get("annotations", {})
    check(ann.get("nginx.ingress.kubernetes.io/proxy-request-buffering") == "off", "Ingress: request buffering off")
    check(ann.get("nginx.ingress.kubernetes.io/proxy-body-size", "0") not in ("", "1m"), "Ingress: body size raised")


def main():
    write = "--write" in sys.argv[1:]
    node_modules = os.environ["K8S_CHECK_NODE_MODULES"]

    rule = generated_rule()
    if write:
        RULE.write_text(rule)
        print(f"wrote {RULE.relative_to(ROOT)}")
    check(RULE.read_text() == rule,
          f"{RULE.relative_to(ROOT)} is generated from alerts.yaml (run scripts/k8s-check --write)")

    check_dockerfile()
    crd_results = []
    for label, path in RENDERS.items():
        objs = render(path)
        kinds = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
        print(f"{label}: rendered {len(objs)} objects: {kinds}")
        validate_core(label, objs)
        crd_results += validate_crds(label, objs, node_modules)
        check_rendered(label, objs, overlay=(label != "base"))

    examples = [o for f in EXAMPLES for o in yaml.safe_load_all(f.read_text()) if o]
    print(f"examples: {', '.join(o['kind'] + '/' + o['metadata']['name'] for o in examples)}")
    validate_core("examples", examples)
    check_examples(examples)

    core_versions = ", ".join(KUBERNETES_VERSIONS)
    schemas = sorted({r["schema"] for r in crd_results})
    print(f"core objects: Kubernetes {core_versions} schemas, strict; CRD objects: {', '.join(schemas)}")
    print(f"k8s-check: {passed} passed, {len(failures)} failed")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
