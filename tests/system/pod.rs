//! The pod, run as the manifests run it: the production overlay is rendered with
//! `kubectl kustomize`, and the Deployment's container (command, args, environment from its
//! ConfigMap, ports, user and group, security settings, Secret and emptyDir mounts) and the
//! migration Job's container are taken from it and run with the binary cargo built under
//! `bubblewrap`, as a real non-root uid (`setpriv` before `bwrap`), on a read-only root with
//! only the emptyDirs writable and every capability dropped. Only the database and storage
//! endpoints, the secrets and the two listening ports are replaced by local ones.
//!
//! Needs `kubectl`, PyYAML (scripts/k8s-check's venv has it), `bwrap` (Debian `bubblewrap`)
//! and `setpriv`, and root to switch to the manifest's uid; `scripts/test` installs
//! bubblewrap.

use std::collections::BTreeSet;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use media_node::auth::Authenticator;
use serde_json::Value;
use test_support::{content, free_port, sha256_hex, Backend, Services, TempDir};

/// The overlay an operator applies.
const OVERLAY: &str = "deploy/k8s/overlays/production";
/// Where the image puts the binary and its configuration (deploy/Dockerfile).
const IMAGE_BINARY: &str = "/usr/local/bin/media-node";
const IMAGE_CONFIG: &str = "/etc/media-node/config";

/// Every object of `kubectl kustomize dir`, as JSON.
fn render(dir: &str) -> Vec<Value> {
    let yaml = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("kubectl runs");
    assert!(
        yaml.status.success(),
        "{}",
        String::from_utf8_lossy(&yaml.stderr)
    );
    yaml_to_json(&yaml.stdout)
}

/// The documents of a YAML stream, converted by PyYAML (serde_yaml is no dependency): the
/// Python of scripts/k8s-check's venv (which has it) when there is one, else `python3`.
fn yaml_to_json(yaml: &[u8]) -> Vec<Value> {
    use std::io::Write;
    let venv = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/media-node/k8s-venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let mut python = Command::new(python)
        .args([
            "-c",
            "import sys, yaml, json; \
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    python.stdin.take().unwrap().write_all(yaml).unwrap();
    let json = python.wait_with_output().unwrap();
    assert!(
        json.status.success(),
        "python3 with PyYAML converts the YAML"
    );
    serde_json::from_slice(&json.stdout).unwrap()
}

fn find<'a>(objects: &'a [Value], kind: &str, pick: impl Fn(&Value) -> bool) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && pick(o))
        .unwrap_or_else(|| panic!("no {kind} in the rendered overlay"))
}

fn str_of(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
        .to_owned()
}

/// A volume as the pod mounts it.
#[derive(Debug, Clone)]
enum Volume {
    /// Writable scratch space: a fresh tmpfs, with the emptyDir's size limit.
    EmptyDir { size: Option<u64> },
    /// The Secret's keys as files of `mode`, group `fsGroup` (as the kubelet makes them).
    Secret { mode: u32 },
}

/// One container of the rendered manifests, with what the kubelet would give it.
#[derive(Debug, Clone)]
struct Container {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    ports: Vec<(String, u16)>,
    uid: u32,
    gid: u32,
    fs_group: Option<u32>,
    no_new_privs: bool,
    mounts: Vec<(PathBuf, Volume)>,
    readiness_path: Option<String>,
    /// The container's working directory: `workingDir`, else the image's (`WORKDIR /`).
    working_dir: String,
}

/// A Kubernetes quantity like `16Mi` in bytes (the suffixes the manifests use).
fn quantity(text: &str) -> u64 {
    let (digits, factor) = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)]
        .iter()
        .find_map(|(suffix, f)| text.strip_suffix(suffix).map(|d| (d, *f)))
        .unwrap_or((text, 1));
    digits.parse::<u64>().unwrap() * factor
}

/// The container `name` of `pod_spec`, with its ConfigMap(s) resolved from `objects`.
fn container(objects: &[Value], pod_spec: &Value, name: &str) -> Container {
    let spec = pod_spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"));
    let pod_security = &pod_spec["securityContext"];
    let security = &spec["securityContext"];
    // The container's settings win over the pod's.
    let id = |key: &str| {
        security[key]
            .as_u64()
            .or_else(|| pod_security[key].as_u64())
            .unwrap_or_else(|| panic!("{name}: {key} is not set"))
    };
    assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(
        security["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{name}"
    );
    assert!(
        security["capabilities"]["add"].is_null(),
        "{name} adds no capability"
    );

    let mut argv: Vec<String> = spec["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    argv.extend(spec["args"].as_array().into_iter().flatten().map(str_of));

    // envFrom first, then env over it, as the kubelet does.
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: String, value: String| {
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    };
    for source in spec["envFrom"].as_array().into_iter().flatten() {
        let map_name = source["configMapRef"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("only configMapRef is supported in envFrom: {source}"));
        let map = find(objects, "ConfigMap", |o| o["metadata"]["name"] == map_name);
        for (key, value) in map["data"].as_object().unwrap() {
            set(key.clone(), str_of(value));
        }
    }
    for var in spec["env"].as_array().into_iter().flatten() {
        let value = var["value"]
            .as_str()
            .unwrap_or_else(|| panic!("only literal env values are supported: {var}"));
        set(str_of(&var["name"]), value.to_owned());
    }

    let ports = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                str_of(&p["name"]),
                u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap(),
            )
        })
        .collect();

    let volumes = pod_spec["volumes"].as_array().cloned().unwrap_or_default();
    let mounts = spec["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|mount| {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("no volume for {mount}"));
            let kind = if let Some(empty) = volume.get("emptyDir") {
                Volume::EmptyDir {
                    size: empty["sizeLimit"].as_str().map(quantity),
                }
            } else if let Some(secret) = volume.get("secret") {
                assert_eq!(mount["readOnly"], true, "Secrets are mounted read-only");
                Volume::Secret {
                    mode: u32::try_from(secret["defaultMode"].as_u64().unwrap_or(0o644)).unwrap(),
                }
            } else {
                panic!("a volume this test does not know: {volume}")
            };
            (PathBuf::from(str_of(&mount["mountPath"])), kind)
        })
        .collect();

    Container {
        argv,
        env,
        ports,
        uid: u32::try_from(id("runAsUser")).unwrap(),
        gid: u32::try_from(id("runAsGroup")).unwrap(),
        fs_group: pod_security["fsGroup"]
            .as_u64()
            .map(|g| u32::try_from(g).unwrap()),
        no_new_privs: security["allowPrivilegeEscalation"] == false,
        mounts,
        readiness_path: spec["readinessProbe"]["httpGet"]["path"]
            .as_str()
            .map(str::to_owned),
        working_dir: spec["workingDir"].as_str().unwrap_or("/").to_owned(),
    }
}

impl Container {
    fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Replaces the value of a variable the manifests set (it must be set there: the test
    /// replaces, it does not invent), or adds one the local services need when `add`.
    fn replace(&mut self, key: &str, value: String) {
        let slot = self
            .env
            .iter_mut()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("the manifests do not set {key}"));
        slot.1 = value;
    }

    fn add(&mut self, key: &str, value: String) {
        assert!(self.env(key).is_none(), "the manifests already set {key}");
        self.env.push((key.to_owned(), value));
    }

    fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no port {name}"))
            .1
    }
}

/// The deepest directory on the way to `path` that exists on the host (symbolic links
/// resolved), and the rest of `path` below it (empty when `path` exists).
fn existing_ancestor(path: &Path) -> (PathBuf, PathBuf) {
    let mut here = PathBuf::from("/");
    let mut parts = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .peekable();
    while let Some(part) = parts.peek() {
        match std::fs::canonicalize(here.join(part)) {
            Ok(resolved) => {
                here = resolved;
                parts.next();
            }
            Err(_) => break,
        }
    }
    (here, parts.collect())
}

/// The host's root read-only with what the image and the pod add: the binary and the
/// configuration where the image has them, the Secret as files, the emptyDirs as tmpfs.
/// A path whose parent directory is missing on the host gets a tmpfs on its first existing
/// ancestor, refilled with that directory's host entries and made read-only again.
fn sandbox_args(image: &Path, secrets: &Path, container: &Container) -> Vec<String> {
    enum Add {
        Bind(PathBuf),
        Tmpfs(Option<u64>),
    }
    let mut adds: Vec<(PathBuf, Add)> = vec![
        (
            PathBuf::from(IMAGE_BINARY),
            Add::Bind(image.join("media-node")),
        ),
        (PathBuf::from(IMAGE_CONFIG), Add::Bind(image.join("config"))),
    ];
    for (path, volume) in &container.mounts {
        adds.push((
            path.clone(),
            match volume {
                Volume::EmptyDir { size } => Add::Tmpfs(*size),
                Volume::Secret { .. } => Add::Bind(secrets.to_owned()),
            },
        ));
    }
    let mut args: Vec<String> = ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        .map(String::from)
        .to_vec();
    // Directories that get a tmpfs copy of themselves so that a mount point can be made.
    let mut refilled = BTreeSet::new();
    let mut resolved = Vec::new();
    for (path, add) in adds {
        let (ancestor, rest) = existing_ancestor(&path);
        let target = if rest.as_os_str().is_empty() {
            ancestor
        } else {
            assert!(
                ancestor != Path::new("/"),
                "{} needs a new top-level directory: not supported",
                path.display()
            );
            if refilled.insert(ancestor.clone()) {
                args.extend(["--tmpfs".into(), ancestor.display().to_string()]);
                for entry in std::fs::read_dir(&ancestor).unwrap() {
                    let entry = entry.unwrap().path();
                    let name = entry.display().to_string();
                    let meta = std::fs::symlink_metadata(&entry).unwrap();
                    if meta.file_type().is_symlink() {
                        let link = std::fs::read_link(&entry).unwrap();
                        args.extend(["--symlink".into(), link.display().to_string(), name]);
                    } else {
                        args.extend(["--ro-bind".into(), name.clone(), name]);
                    }
                }
            }
            ancestor.join(rest)
        };
        resolved.push((target, add));
    }
    for (target, add) in resolved {
        let target = target.display().to_string();
        match add {
            Add::Bind(source) => {
                args.extend(["--ro-bind".into(), source.display().to_string(), target])
            }
            Add::Tmpfs(size) => {
                // An emptyDir is writable by everyone in the pod (mode 1777 here).
                args.extend(["--perms".into(), "1777".into()]);
                if let Some(size) = size {
                    args.extend(["--size".into(), size.to_string()]);
                }
                args.extend(["--tmpfs".into(), target]);
            }
        }
    }
    for dir in refilled {
        args.extend(["--remount-ro".into(), dir.display().to_string()]);
    }
    args
}

/// `container` started as the kubelet would: its uid and gid (fsGroup as a supplementary
/// group), no new privileges, then bubblewrap with its own PID namespace in which the
/// binary is PID 1 (it gets the SIGTERM, as in a pod), nothing inherited from the test's
/// environment.
fn sandboxed(image: &Path, secrets: &Path, container: &Container, log: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command.arg(format!("--reuid={}", container.uid));
    command.arg(format!("--regid={}", container.gid));
    match container.fs_group {
        Some(group) => command.arg(format!("--groups={group}")),
        None => command.arg("--clear-groups"),
    };
    if container.no_new_privs {
        command.arg("--no-new-privs");
    }
    command.args(["--", "bwrap"]);
    command.args(sandbox_args(image, secrets, container));
    command.args([
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--hostname",
        "media-node-pod",
        "--as-pid-1",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--chdir",
        &container.working_dir,
        "--clearenv",
    ]);
    // What the image and the kubelet set besides the manifest's variables.
    for (key, value) in [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/"),
        ("HOSTNAME", "media-node-pod"),
    ] {
        command.args(["--setenv", key, value]);
    }
    for (key, value) in &container.env {
        command.args(["--setenv", key, value]);
    }
    command.arg("--");
    command.args(&container.argv);
    let out = std::fs::File::create(log).unwrap();
    command
        .env_clear()
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    command
}

/// The process in the sandbox: bwrap's only child (the binary, PID 1 inside).
fn sandbox_child(bwrap: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(bwrap)
        })
}

fn tool(name: &str, hint: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{name} is needed: {hint}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_runs_as_the_manifests_say() {
    tokio::time::timeout(Duration::from_secs(120), run_the_pod())
        .await
        .expect("the pod test finishes within two minutes");
}

async fn run_the_pod() {
    tool(
        "bwrap",
        "the Debian package bubblewrap (scripts/test installs it)",
    );
    tool("setpriv", "util-linux");
    tool("kubectl", "kubectl kustomize renders the manifests");
    assert!(
        nix_is_root(),
        "the test switches to the manifest's uid with setpriv and needs root for it"
    );

    let objects = render(OVERLAY);
    let deployment = find(&objects, "Deployment", |o| {
        o["metadata"]["name"] == "media-node"
    });
    let pod = &deployment["spec"]["template"]["spec"];
    let job = find(&objects, "Job", |o| {
        o["metadata"]["labels"]["app.kubernetes.io/component"] == "migrate"
    });
    let job_pod = &job["spec"]["template"]["spec"];
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    let job_container_name = str_of(&job_pod["containers"][0]["name"]);
    let mut serve = container(&objects, pod, "media-node");
    let mut migrate = container(&objects, job_pod, &job_container_name);
    assert_eq!(serve.env("APP_ENV"), Some("production"));
    assert_eq!(migrate.env("APP_ENV"), Some("production"));
    assert!(serve.uid != 0 && serve.gid != 0, "a non-root uid and gid");
    assert!(
        serve.argv.first().map(String::as_str) == Some(IMAGE_BINARY),
        "the image's binary: {:?}",
        serve.argv
    );
    // The settings the probes and the Services use are the ports the binary listens on.
    assert_eq!(
        serve.env("MEDIA_NODE__SERVER__PORT"),
        Some(serve.port("http").to_string().as_str())
    );
    assert_eq!(
        serve.env("MEDIA_NODE__ADMIN__PORT"),
        Some(serve.port("admin").to_string().as_str())
    );
    assert!(
        serve
            .mounts
            .iter()
            .any(|(_, v)| matches!(v, Volume::EmptyDir { .. })),
        "an emptyDir for scratch space"
    );

    // Local replacements: the database, the bucket and prefix, the S3 endpoint of the
    // local Garage (plain HTTP on loopback) and its region; the secrets below.
    let dir = TempDir::new();
    let local = test_support::test_settings(Backend::Production, &dir).await;
    let services = Services::from_env();
    let database_url = {
        // The manifests keep the password out of the URL (it comes from the Secret).
        let mut url = url::Url::parse(local.database.url.expose()).unwrap();
        // The local server trusts loopback and checks no password; the file must still
        // hold one.
        let password = url
            .password()
            .unwrap_or("unchecked-by-local-trust")
            .to_owned();
        url.set_password(None).unwrap();
        (url.to_string(), password)
    };
    for c in [&mut serve, &mut migrate] {
        c.replace("MEDIA_NODE__DATABASE__URL", database_url.0.clone());
        c.replace("MEDIA_NODE__STORAGE__URL", local.storage.url.clone());
        c.replace(
            "MEDIA_NODE__STORAGE__S3__REGION",
            services.s3_region.clone(),
        );
        c.add(
            "MEDIA_NODE__STORAGE__S3__ENDPOINT",
            services.s3_endpoint.clone(),
        );
        c.add("MEDIA_NODE__STORAGE__S3__ALLOW_HTTP", "true".into());
    }
    // The manifests' 8080 and 9090 may be taken on this machine: only the ports move.
    let (port, admin_port) = (free_port(), free_port());
    serve.replace("MEDIA_NODE__SERVER__PORT", port.to_string());
    serve.replace("MEDIA_NODE__ADMIN__PORT", admin_port.to_string());

    // The image: the binary and the configuration, readable by the pod's uid.
    let image = dir.0.join("image");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_media-node"), image.join("media-node")).unwrap();
    std::fs::set_permissions(
        image.join("media-node"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let config = image.join("config");
    std::fs::create_dir_all(&config).unwrap();
    for entry in std::fs::read_dir(format!("{}/config", env!("CARGO_MANIFEST_DIR"))).unwrap() {
        let entry = entry.unwrap().path();
        let copy = config.join(entry.file_name().unwrap());
        std::fs::copy(&entry, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    for d in [&dir.0, &image, &config] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // The Secret as the kubelet writes it: one file per key the *_FILE settings name,
    // owned by root, group fsGroup, mode defaultMode. The keys are those of the example
    // Secret, so the example, the ConfigMap and this test agree.
    let example = yaml_to_json(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/k8s/examples/secret.yaml"
        ))
        .unwrap(),
    );
    let example_keys: BTreeSet<String> = example[0]["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let (secret_mount, secret_mode) = serve
        .mounts
        .iter()
        .find_map(|(path, v)| match v {
            Volume::Secret { mode } => Some((path.clone(), *mode)),
            _ => None,
        })
        .expect("the Secret is mounted");
    let secrets = dir.0.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let hs256 = local
        .auth
        .hs256_secret
        .as_ref()
        .unwrap()
        .expose()
        .to_owned();
    let mut files = 0;
    for (key, value) in serve.env.clone() {
        if !key.ends_with("_FILE") {
            continue;
        }
        let file = Path::new(&value);
        assert_eq!(
            file.parent(),
            Some(secret_mount.as_path()),
            "{key} points into the Secret"
        );
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            example_keys.contains(&name),
            "{name} is a key of the example Secret"
        );
        let content = match name.as_str() {
            "hs256-secret" => hs256.clone(),
            "url-signing-secret" => "s".repeat(40),
            "database-password" => database_url.1.clone(),
            "s3-access-key-id" => services.s3_access_key_id.clone(),
            "s3-secret-access-key" => services.s3_secret_access_key.clone(),
            other => panic!("a secret this test does not know: {other}"),
        };
        let path = secrets.join(&name);
        std::fs::write(&path, content).unwrap();
        chown(&path, Some(0), Some(serve.fs_group.unwrap_or(0))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(secret_mode)).unwrap();
        files += 1;
    }
    assert_eq!(files, 5, "the five secrets come from files");
    // The Job mounts the same Secret at the same place.
    assert!(migrate
        .mounts
        .iter()
        .any(|(p, v)| *p == secret_mount && matches!(v, Volume::Secret { .. })));

    // The migration Job first: production `serve` only checks the schema.
    let migrate_log = dir.0.join("migrate.log");
    let mut job = sandboxed(&image, &secrets, &migrate, &migrate_log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "migrate did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(&migrate_log).unwrap_or_default();
    assert!(status.success(), "migrate: {status}\n{log}");
    println!("migration Job ({:?}): exit 0", migrate.argv);

    // What the Deployment's container may write: a shell in the same sandbox tries every
    // place the binary could think of; only the emptyDirs take a file.
    let mut probe = serve.clone();
    let mut places: Vec<String> = [
        "/",
        "/etc",
        IMAGE_CONFIG,
        "/usr/local/bin",
        "/var",
        "/var/tmp",
        "/run",
        "/root",
        "/home",
        "/opt",
    ]
    .map(String::from)
    .to_vec();
    places.extend(serve.mounts.iter().map(|(p, _)| p.display().to_string()));
    probe.argv = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!(
            "for d in {}; do if touch \"$d/.probe\" 2>/dev/null; then echo \"$d\"; \
             rm -f \"$d/.probe\"; fi; done",
            places.join(" ")
        ),
    ];
    let probe_log = dir.0.join("probe.log");
    let status = sandboxed(&image, &secrets, &probe, &probe_log)
        .status()
        .unwrap();
    assert!(status.success());
    let writable: Vec<String> = std::fs::read_to_string(&probe_log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let empty_dirs: Vec<String> = serve
        .mounts
        .iter()
        .filter(|(_, v)| matches!(v, Volume::EmptyDir { .. }))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert_eq!(writable, empty_dirs, "writable places of the pod");
    println!(
        "writable for uid {}: {writable:?} (of {places:?})",
        serve.uid
    );

    // The Deployment's container.
    let serve_log = dir.0.join("serve.log");
    let mut child = sandboxed(&image, &secrets, &serve, &serve_log)
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&serve_log).unwrap_or_default();
    let readiness = format!(
        "http://127.0.0.1:{admin_port}{}",
        serve.readiness_path.as_deref().unwrap()
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the pod exited before it was ready: {status}\n{}", logs());
        }
        if let Ok(r) = client.get(&readiness).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not ready\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("ready: {readiness} answered 200");

    // The process as the host sees it: the manifest's uid and gid, no capability, no way
    // to gain privileges.
    let pid = sandbox_child(child.id()).expect("the sandboxed process");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let uid = serve.uid.to_string();
    let gid = serve.gid.to_string();
    assert_eq!(
        field("Uid"),
        [uid.as_str(); 4],
        "real, effective, saved, fs uid"
    );
    assert_eq!(field("Gid"), [gid.as_str(); 4]);
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(caps), ["0000000000000000"], "{caps}");
    }
    if serve.no_new_privs {
        assert_eq!(field("NoNewPrivs"), ["1"]);
    }
    println!(
        "process {pid}: uid {uid}, gid {gid}, groups {:?}, no capabilities, NoNewPrivs {:?}",
        field("Groups"),
        field("NoNewPrivs")
    );

    // An upload and a download through the public port; 10 MiB goes multipart.
    let token = Authenticator::from_settings(&local.auth, false)
        .unwrap()
        .mint("acct", Duration::from_secs(600), None)
        .unwrap();
    let data = content(10 * 1024 * 1024, 80);
    let upload = client
        .post(format!("http://127.0.0.1:{port}/v1/media"))
        .bearer_auth(&token)
        .header("X-Gr-File-Extension", "mp4")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 201, "{}", logs());
    let json: Value = upload.json().await.unwrap();
    let id = json["media"][0]["id"].as_str().unwrap().to_owned();
    let download = client
        .get(format!("http://127.0.0.1:{port}/v1/media/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let body = download.bytes().await.unwrap();
    assert_eq!(sha256_hex(&body), sha256_hex(&data));
    println!(
        "upload 201 and download 200 of {} bytes, SHA-256 equal",
        data.len()
    );

    // SIGTERM to PID 1 of the sandbox, as the kubelet sends it; exit 0 within the grace
    // period.
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > grace {
            let _ = child.kill();
            panic!(
                "no exit within terminationGracePeriodSeconds ({grace:?})\n{}",
                logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", logs());
    println!(
        "SIGTERM: exit 0 after {:.1} s (grace period {} s)",
        signalled.elapsed().as_secs_f64(),
        grace.as_secs()
    );
    let text = logs();
    assert!(
        !text.contains("Read-only file system") && !text.contains("Permission denied"),
        "{text}"
    );
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
