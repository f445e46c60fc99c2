"""The launch configs in cluster/ are checked statically: they parse, they hold what their launcher
needs, and every `mmtune` command line in them parses with the real `mmtune` parser."""
from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from mmtune.tune.cli import build_parser

CLUSTER = REPO / "cluster"
AWS = CLUSTER / "aws-gpu.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
SBATCH = CLUSTER / "slurm.sbatch"
WAIT = CLUSTER / "wait_for_cluster.py"
DOCKERFILE = CLUSTER / "Dockerfile"
IN_ENV = '"${in_env[@]}" '  # slurm.sbatch's prefix: run in the image (Apptainer) or the venv

# Dummy values for the shell variables the command lines use; an unknown variable is an error.
PLACEHOLDERS = {"head_ip": "10.0.0.1", "port": "6379", "SHARED": "/shared/mmtune", "SWEEP_NAME": "slurm-1",
                "RESUME": "slurm-1", "SLURM_JOB_ID": "1", "RAY_HEAD_IP": "10.0.0.1"}
SEPARATORS = {"&&", "||", ";", "|", "&"}


def expand(text: str) -> str:
    """Replace $VAR / ${VAR} with placeholders (no shell runs)."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in PLACEHOLDERS, f"no placeholder for ${name} in {text!r}"
        return PLACEHOLDERS[name]
    out = re.sub(r"\$\{#\w+\[@\]\}", "3", text)  # ${#array[@]}: the number of nodes
    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, out)
    assert "$" not in out, f"unexpanded shell syntax in {text!r}"
    return out


def split_commands(text: str) -> list[list[str]]:
    """A shell command string as simple commands (split at && || ; | &), each a list of words."""
    lex = shlex.shlex(expand(text), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    commands, cur = [], []
    for tok in lex:
        if tok in SEPARATORS:
            commands.append(cur)
            cur = []
        else:
            cur.append(tok)
    return [c for c in [*commands, cur] if c]


def program_argv(text: str, program: str) -> list[list[str]]:
    """The arguments of each call of PROGRAM (a command, or a script run by python) in TEXT."""
    out = []
    for words in split_commands(text):
        while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value prefixes
            words = words[1:]
        if words[:1] and Path(words[0]).name in ("python", "python3") and len(words) > 1:
            words = words[1:]
        if words and Path(words[0]).name == program:
            out.append(words[1:])
    return out


def parse_mmtune(argv: list[str], where: str):
    try:
        return build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `mmtune {shlex.join(argv)}` does not parse with the mmtune CLI (exit {e.code})")


def check_sweep(argv: list[str], where: str) -> None:
    args = parse_mmtune(argv, where)
    assert args.cmd == "sweep", where
    assert args.address, f"{where}: a cluster sweep needs --address"
    assert "--storage" in argv and args.storage, f"{where}: --storage must be given"
    # Shared storage as a file:// URI: a plain path is refused on a multi-node cluster, and mmtune
    # writes its trial records with file operations (other URI schemes are refused).
    assert args.storage.startswith("file:///"), f"{where}: --storage file:///<shared mount> (got {args.storage})"
    assert "--gpus-per-trial" in argv and args.gpus_per_trial, f"{where}: --gpus-per-trial must be given"
    assert "--allow-local-storage" not in argv, f"{where}: shared storage needs no --allow-local-storage"
    assert args.data and args.name, where


def wait_helper():
    spec = importlib.util.spec_from_file_location("wait_for_cluster", WAIT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_wait_calls(text: str, where: str) -> list:
    """Every wait_for_cluster.py call in TEXT parses with the helper's own parser."""
    calls = program_argv(text, "wait_for_cluster.py")
    parser = wait_helper().build_parser()
    parsed = []
    for argv in calls:
        try:
            parsed.append(parser.parse_args(argv))
        except SystemExit:
            pytest.fail(f"{where}: `wait_for_cluster.py {shlex.join(argv)}` does not parse")
    return parsed


def bash_ok(script: str) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    r = subprocess.run([bash, "-n"], input=script, capture_output=True, text=True)
    assert r.returncode == 0, f"bash -n: {r.stderr}\n{script}"


# ---------------------------------------------------------------- AWS (Ray cluster launcher)

@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load(AWS.read_text())


def test_aws_required_keys(aws):
    assert aws["cluster_name"]
    assert aws["provider"]["type"] == "aws" and aws["provider"]["region"]
    assert aws["auth"]["ssh_user"]
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]
    assert "GPU" not in head["resources"] and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = {n: t for n, t in types.items() if n != aws["head_node_type"]}
    gpu = [t for t in workers.values() if t["node_config"]["InstanceType"].split(".")[0][:1] in ("g", "p")
           and t.get("max_workers", 0) > 0]
    assert gpu, "an autoscaling GPU worker type with max_workers > 0"
    assert all(t.get("min_workers", 0) <= t["max_workers"] <= aws["max_workers"] for t in gpu)
    assert all("ImageId" in t["node_config"] for t in types.values())
    assert aws["file_mounts"].get("~/mmtune") == "."
    setup = " ".join(aws["setup_commands"])
    assert 'pip install -c constraints.txt -e ".[dev]"' in setup and "cd ~/mmtune" in setup
    assert any("ray start --head" in c and "--dashboard-host=127.0.0.1" in c and "--port=6379" in c
               for c in aws["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in aws["worker_start_ray_commands"])
    assert "ray stop" in aws["head_start_ray_commands"] and "ray stop" in aws["worker_start_ray_commands"]


def ray_up_validate(config: dict) -> None:
    """Merge CONFIG with Ray's provider defaults and validate it, as `ray up` does; raises if invalid.

    Ray has no public API for this. Checked in ray 2.60: `ray.autoscaler.sdk` exports only
    `fillout_defaults` (defaults, no validation, and not the rest of prepare_config) and
    `bootstrap_config` (validates, but then calls the cloud provider: AWS credentials and network);
    `ray up` has no dry-run; `ray.autoscaler.v2.instance_manager.config` uses the same private
    functions. So the private `prepare_config` / `validate_config` are used here, and only here.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_aws_matches_ray_schema(aws):
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(aws, schema)  # the file as written: unknown keys are refused
    ray_up_validate(aws)  # merged with Ray's AWS defaults
    # The validation is real: configs `ray up` refuses are refused here too.
    with pytest.raises(jsonschema.ValidationError):
        ray_up_validate({**aws, "no_such_key": 1})
    with pytest.raises(ValueError, match="head_node_type"):
        ray_up_validate({**aws, "head_node_type": "no-such-type"})
    too_many = copy.deepcopy(aws)
    for t in too_many["available_node_types"].values():
        t["min_workers"] = t["max_workers"] = aws["max_workers"]
    with pytest.raises(ValueError, match="max_workers"):
        ray_up_validate(too_many)


def test_aws_shell_commands_are_valid_bash(aws):
    keys = ["setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands"]
    bash_ok("\n".join(c for k in keys for c in aws.get(k) or []))


def test_aws_mmtune_command_parses():
    text = AWS.read_text()
    lines = re.findall(r"^# mmtune-command: (mmtune .+)$", text, re.M)
    assert len(lines) == 1, "one `# mmtune-command: mmtune sweep ...` line"
    [argv] = program_argv(lines[0], "mmtune")
    check_sweep(argv, f"{AWS.name} mmtune-command")

    # The `ray exec` line of the instructions runs the same sweep, after waiting for the GPUs.
    execs = [shlex.split(line.lstrip("# "))[-1] for line in text.splitlines()
             if line.startswith("#") and "ray exec" in line and "mmtune sweep" in line]
    assert len(execs) == 1
    bash_ok(execs[0])
    assert program_argv(execs[0], "mmtune") == [argv]
    [wait] = check_wait_calls(execs[0], AWS.name)
    assert wait.request and wait.gpus > 0
    resumes = [argv for line in text.splitlines() if "mmtune resume" in line
               for argv in program_argv(shlex.split(line.lstrip("# "))[-1], "mmtune")]
    assert resumes, "the resume command is documented"
    for r in resumes:
        args = parse_mmtune(r, f"{AWS.name} resume")
        assert args.cmd == "resume" and args.address and args.experiment.startswith("/mnt/efs/")


# ---------------------------------------------------------------- KubeRay RayJob

@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def test_rayjob_required_keys(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["entrypoint"] and spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int)
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] and head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head["template"]["spec"]["containers"]
    groups = cluster["workerGroupSpecs"]
    assert groups
    gpu_groups = []
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for c in g["template"]["spec"]["containers"]:
            if int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0:
                gpu_groups.append(g)
    assert gpu_groups, "a worker group with nvidia.com/gpu limits"

    # Every pod mounts the shared volume, and the storage of the sweep is on it.
    pods = [head["template"]["spec"], *(g["template"]["spec"] for g in groups)]
    shared = set()
    for pod in pods:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/mnt/shared") in claims, f"{c['name']}: the shared PVC at /mnt/shared"
            shared.add(claims[mounts["/mnt/shared"]])
    assert len(shared) == 1, f"one shared PVC for every pod, got {shared}"


def test_rayjob_entrypoint_parses(rayjob):
    entry = rayjob["spec"]["entrypoint"]
    bash_ok(entry)
    sweeps = program_argv(entry, "mmtune")
    assert len(sweeps) == 1
    check_sweep(sweeps[0], f"{RAYJOB.name} entrypoint")
    args = build_parser().parse_args(sweeps[0])
    assert args.storage.removeprefix("file://").startswith("/mnt/shared/")
    assert args.data.startswith("/mnt/shared/")
    [wait] = check_wait_calls(entry, RAYJOB.name)
    gpus = sum(g["replicas"] * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
               for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
               for c in g["template"]["spec"]["containers"])
    assert 0 < wait.gpus <= gpus, "wait for GPUs that the cluster can have"
    resumes = [argv for line in RAYJOB.read_text().splitlines() if "mmtune resume" in line
               for argv in program_argv(line.lstrip("# "), "mmtune")]
    assert resumes and all(parse_mmtune(r, "resume").address for r in resumes)


# ---------------------------------------------------------------- SLURM

def sbatch_commands(text: str, keep_env: bool = False) -> list[str]:
    """The script's lines with `\\` continuations joined and comments dropped (and the IN_ENV prefix, unless
    KEEP_ENV)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines if keep_env else [ln.replace(IN_ENV, "") for ln in lines]


def test_sbatch_is_valid_bash():
    bash_ok(SBATCH.read_text())


def test_sbatch_required_parts():
    text = SBATCH.read_text()
    directives = re.findall(r"^#SBATCH\s+(--[\w-]+)", text, re.M)
    for flag in ("--nodes", "--gpus-per-node", "--cpus-per-task", "--time"):
        assert flag in directives, flag
    # sbatch reads #SBATCH lines only before the first command.
    first_command = next(i for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.startswith("#"))
    assert max(i for i, ln in enumerate(text.splitlines()) if ln.startswith("#SBATCH")) < first_command
    lines = sbatch_commands(text)
    assert any(ln.startswith("srun") and "ray start --head" in ln and "--port=" in ln and "--block" in ln
               for ln in lines)
    assert any(ln.startswith("srun") and "ray start --address=" in ln and "--block" in ln for ln in lines)
    assert any("scontrol show hostnames" in ln for ln in lines)
    assert any("ray stop" in ln for ln in lines) and re.search(r"^trap \w+ EXIT", text, re.M)
    assert "RAY_AUTH_MODE" in text


def test_sbatch_mmtune_commands_parse():
    cmds = [ln for ln in sbatch_commands(SBATCH.read_text()) if ln.startswith("mmtune ")]
    argvs = [a for ln in cmds for a in program_argv(ln, "mmtune")]
    sweeps = [a for a in argvs if a[0] == "sweep"]
    assert len(sweeps) == 1
    check_sweep(sweeps[0], SBATCH.name)
    args = build_parser().parse_args(sweeps[0])
    assert args.storage.startswith("file:///shared/") and args.address == "10.0.0.1:6379"
    resumes = [a for a in argvs if a[0] == "resume"]
    assert len(resumes) == 1
    args = parse_mmtune(resumes[0], f"{SBATCH.name} resume")
    assert args.address == "10.0.0.1:6379" and args.experiment.startswith("/shared/")
    [wait] = [w for ln in sbatch_commands(SBATCH.read_text()) if "wait_for_cluster.py" in ln
              for w in check_wait_calls(ln, SBATCH.name)]
    assert wait.address == "10.0.0.1:6379" and wait.nodes == 3


# ---------------------------------------------------------------- the wait helper

def test_wait_helper_shortfall():
    shortfall = wait_helper().shortfall
    head = {"Alive": True, "Resources": {"CPU": 8}}
    gpu = {"Alive": True, "Resources": {"CPU": 4, "GPU": 1}}
    dead = {"Alive": False, "Resources": {"CPU": 4, "GPU": 1}}
    assert shortfall([head, gpu, gpu], 3, 2) is None
    assert shortfall([head, gpu, dead], 3, 2) == "2/3 nodes, 1/2 GPUs"
    assert shortfall([head], 1, 0) is None


def test_wait_helper_against_a_running_ray(ray_session):
    """On the session's local Ray (4 logical GPUs): ready at once, or times out with what is missing."""
    main = wait_helper().main
    assert main(["--gpus", "4", "--timeout", "5"]) == 0
    assert main(["--gpus", "5", "--timeout", "0.5", "--interval", "0.2"]) == 1
    # A standing autoscaler request (no autoscaler here: accepted and ignored), then withdrawn.
    assert main(["--request", "--gpus", "2", "--timeout", "5"]) == 0
    assert main(["--release"]) == 0


def test_readme_names_the_three_paths():
    text = (CLUSTER / "README.md").read_text()
    for name in (AWS.name, RAYJOB.name, SBATCH.name, "mmtune resume", "6379", "8265"):
        assert name in text, name


def test_sbatch_runs_ray_python_and_mmtune_in_the_chosen_environment():
    """Every ray, python and mmtune command goes through in_env: the image (IMAGE) or the venv, never a mix."""
    programs = ("ray start", "ray stop", "ray get-auth-token", "python cluster/", "mmtune sweep", "mmtune resume")
    lines = sbatch_commands(SBATCH.read_text(), keep_env=True)
    used = [p for ln in lines for p in programs if p in ln]
    assert set(used) == set(programs)
    for ln in lines:
        assert all(IN_ENV + p in ln for p in programs if p in ln), ln
    assert any(ln.startswith("in_env=(apptainer exec --nv") and '"$IMAGE"' in ln for ln in lines)


# ---------------------------------------------------------------- the image (cluster/Dockerfile)

def dockerfile_args() -> dict[str, str]:
    """The Dockerfile's ARG defaults (the first default given for each name)."""
    found: dict[str, str] = {}
    for name, value in re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M):
        found.setdefault(name, value)
    return found


def pins() -> dict[str, str]:
    """constraints.txt as {package: version}."""
    lines = [ln.split("#")[0].strip() for ln in (REPO / "constraints.txt").read_text().splitlines()]
    return dict(ln.split("==") for ln in lines if ln)


def image_tag() -> str:
    """The tag the Dockerfile's build instructions give: REGISTRY/mmtune:<version>-ray<ray>-<cuda>."""
    [tag] = set(re.findall(r"docker build -f cluster/Dockerfile -t (\S+) \.", DOCKERFILE.read_text()))
    return tag


def test_dockerfile_matches_the_pinned_versions():
    args, pinned = dockerfile_args(), pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert args["RAY_VERSION"] == pinned["ray"] and args["TORCH_VERSION"] == pinned["torch"]
    major, minor = re.fullmatch(r">=(\d+)\.(\d+)", project["requires-python"]).groups()
    assert args["PYTHON"] == f"py{major}{minor}" and re.fullmatch(r"cu\d{3}", args["CUDA"])
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON\}-\$\{CUDA\}$", text, re.M)
    assert '--index-url "https://download.pytorch.org/whl/${CUDA}" "torch==${TORCH_VERSION}"' in text
    # The package from the copied repository, pinned, without the dev extras (and not editable).
    [install] = re.findall(r"pip install --no-cache-dir -c constraints.txt (\S+)", text)
    assert install in ('"."', '".[report]"') and "COPY --chown=ray . /opt/mmtune" in text
    # The image installs from constraints.txt as it is: no local wheel or path there.
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.+]+", f"{k}=={v}") for k, v in pinned.items())
    assert image_tag() == f"REGISTRY/mmtune:{project['version']}-ray{args['RAY_VERSION']}-{args['CUDA']}"


def test_kuberay_and_slurm_run_the_dockerfile_image(rayjob):
    tag = image_tag()
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]
    assert {c["image"] for pod in pods for c in pod["containers"]} == {tag}
    assert cluster["rayVersion"] == dockerfile_args()["RAY_VERSION"]
    assert "cluster/Dockerfile" in RAYJOB.read_text() and f"docker build -f cluster/Dockerfile -t {tag} ." in \
        RAYJOB.read_text()
    # The entrypoint's files are the repository's, copied to /opt/mmtune in the image.
    for path in re.findall(r"/opt/mmtune/(\S+)", rayjob["spec"]["entrypoint"]):
        assert (REPO / path).is_file(), path
    sbatch = SBATCH.read_text()
    assert "cluster/Dockerfile" in sbatch and f"docker://{tag}" in sbatch and "--pwd /opt/mmtune" in sbatch
    readme = (CLUSTER / "README.md").read_text()
    assert f"docker build -f cluster/Dockerfile -t {tag} ." in readme and ".[dev]" not in readme
