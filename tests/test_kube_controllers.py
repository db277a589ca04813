"""Unit tests of the controllers' decisions: pure functions of API objects, no server."""

from __future__ import annotations

import datetime as dt

from knetlab.kube.controllers import daemonset as dsc
from knetlab.kube.controllers import endpointslice as esc
from knetlab.kube.controllers import job as jc
from knetlab.kube.controllers import nodelifecycle as nlc
from knetlab.kube.controllers import replicaset as rsc
from knetlab.kube.controllers import rollout as dc
from knetlab.kube.controllers import scheduler as sc
from knetlab.kube.controllers import statefulset as ssc
from knetlab.kube.controllers import util

T0 = "2025-01-01T00:00:00Z"


def pod(name: str, *, ready: bool = False, phase: str = "Running", node: str = "n1",
        ip: str = "10.0.0.1", created: str = T0, labels: dict | None = None,
        deleting: bool = False, ports: list | None = None) -> dict:
    conds = [{"type": "Ready", "status": "True" if ready else "False",
              "lastTransitionTime": T0}]
    md = {"name": name, "namespace": "default", "uid": f"u-{name}", "creationTimestamp": created,
          "labels": labels or {"app": "web"}}
    if deleting:
        md["deletionTimestamp"] = T0
    return {"metadata": md,
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports or []}]},
            "status": {"phase": phase, "podIP": ip, "conditions": conds}}


def node(name: str, ready: bool = True, **spec: object) -> dict:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": dict(spec),
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


# -- util ------------------------------------------------------------------------------------
def test_selectors_and_percentages() -> None:
    sel = {"matchLabels": {"app": "web"},
           "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}
    assert util.selector_matches(sel, {"app": "web", "tier": "a"})
    assert not util.selector_matches(sel, {"app": "web"})
    assert not util.selector_matches(None, {"app": "web"})
    assert util.selector_matches({}, {})
    assert util.resolve_int_or_percent("25%", 10, True, 0) == 3
    assert util.resolve_int_or_percent("25%", 10, False, 0) == 2
    assert util.resolve_int_or_percent(None, 4, True, "25%") == 1
    h = util.template_hash({"spec": {"containers": [{"name": "c"}]}})
    assert h == util.template_hash({"spec": {"containers": [{"name": "c"}]}})
    assert h != util.template_hash({"spec": {"containers": [{"name": "c"}]}}, 1)


def test_taints_and_affinity() -> None:
    n = node("n1", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    assert util.untolerated_taint(n, []) is not None
    assert util.untolerated_taint(n, [{"key": "dedicated", "operator": "Equal", "value": "db",
                                       "effect": "NoSchedule"}]) is None
    assert util.untolerated_taint(n, [{"operator": "Exists"}]) is None
    spec = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                "values": ["n2"]}]}]}}}}
    assert not util.node_matches_pod(n, spec)
    assert util.node_matches_pod(node("n2"), spec)


# -- replicaset --------------------------------------------------------------------------------
def test_replicaset_plan_ranks_deletions() -> None:
    pods = [pod("ready-old", ready=True), pod("notready", ready=False),
            pod("pending", phase="Pending", ready=False),
            pod("unscheduled", phase="Pending", node=""),
            pod("ready-new", ready=True, created="2025-01-02T00:00:00Z")]
    create, delete = rsc.plan_replicas(2, pods)
    assert create == 0
    assert [util.meta(p)["name"] for p in delete] == ["unscheduled", "pending", "notready"]
    assert rsc.plan_replicas(7, pods)[0] == 2
    assert rsc.plan_replicas(2000, [], burst=500)[0] == 500
    assert rsc.slow_start_batches(10) == [1, 2, 4, 3]


def test_replicaset_status_min_ready_seconds() -> None:
    rs = {"metadata": {"generation": 3}, "spec": {"minReadySeconds": 3600, "template": {
        "metadata": {"labels": {"app": "web", "v": "1"}}}}}
    fresh = pod("a", ready=True)
    fresh["status"]["conditions"][0]["lastTransitionTime"] = util.fmt_time()
    st = rsc.replicaset_status(rs, [pod("b", ready=True, labels={"app": "web", "v": "1"}),
                                    fresh])
    assert st == {"replicas": 2, "fullyLabeledReplicas": 1, "readyReplicas": 2,
                  "availableReplicas": 1, "observedGeneration": 3}


# -- deployment ------------------------------------------------------------------------------
def deploy(replicas: int = 10, surge: object = "25%", unavail: object = "25%") -> dict:
    return {"metadata": {"name": "web", "namespace": "default", "uid": "d1", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "v2"}]}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                         "maxSurge": surge, "maxUnavailable": unavail}}}}


def rs(name: str, replicas: int, available: int, created: str = T0, rev: int = 1) -> dict:
    return {"metadata": {"name": name, "uid": name, "creationTimestamp": created,
                         "annotations": {dc.REVISION: str(rev)}},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas, "availableReplicas": available,
                       "readyReplicas": available}}


def test_rolling_update_respects_surge_and_unavailable() -> None:
    d = deploy(10, "25%", "25%")  # surge 3 (rounded up), unavailable 2 (rounded down)
    assert dc.surge_unavailable(d) == (3, 2)
    new, old = rs("new", 0, 0), rs("old", 10, 10)
    assert dc.rolling_step(d, new, [old]) == {"new": 3}  # total 13 = 10 + surge
    new = rs("new", 3, 0)
    assert dc.rolling_step(d, new, [old]) == {"old": 8}  # available 10 - min 8
    new, old = rs("new", 3, 0), rs("old", 8, 8)
    assert dc.rolling_step(d, new, [old]) == {"new": 5}
    new = rs("new", 5, 0)
    assert dc.rolling_step(d, new, [old]) == {}  # waits: nothing may become unavailable
    new = rs("new", 5, 5)
    assert dc.rolling_step(d, new, [old]) == {"old": 3}
    assert dc.rolling_step(d, rs("new", 10, 10), [rs("old", 0, 0)]) == {}
    # unhealthy old pods go first, costing no availability
    # (max scaled down = 13 total - 8 min available - 3 new unavailable = 2)
    assert dc.rolling_step(d, rs("new", 3, 0), [rs("old", 10, 6)]) == {"old": 8}
    assert dc.rolling_step(deploy(3, 1, 0), rs("new", 1, 0), [rs("old", 3, 3)]) == {}
    assert dc.rolling_step(deploy(3, 1, 0), rs("new", 1, 1), [rs("old", 3, 3)]) == {"old": 2}
    assert dc.surge_unavailable(deploy(3, 0, 0)) == (0, 1)


def test_deployment_status_and_revisions() -> None:
    d = deploy(3)
    new = rs("new", 3, 3, rev=2)
    st = dc.deployment_status(d, new, [rs("old", 0, 0)])
    assert st["updatedReplicas"] == 3 and st["availableReplicas"] == 3
    assert st["observedGeneration"] == 2 and st["unavailableReplicas"] == 0
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Available"]["status"] == "True"
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
    partial = dc.deployment_status(d, rs("new", 2, 0), [rs("old", 2, 2)])
    assert {c["type"]: c["reason"] for c in partial["conditions"]}["Progressing"] == \
        "ReplicaSetUpdated"
    obj = dc.new_rs_object(d, 1, 4)
    h = obj["metadata"]["labels"][dc.HASH]
    assert obj["metadata"]["name"] == f"web-{h}"
    assert obj["spec"]["selector"]["matchLabels"] == {"app": "web", dc.HASH: h}
    assert obj["metadata"]["annotations"][dc.REVISION] == "4"
    assert dc.find_new_rs(d, [obj]) is obj
    old_tmpl = dict(obj, spec=dict(obj["spec"], template={"metadata": {"labels": {}}}))
    assert dc.find_new_rs(d, [old_tmpl]) is None
    olds = [rs(f"r{i}", 0, 0, rev=i) for i in range(1, 6)]
    d["spec"]["revisionHistoryLimit"] = 2
    assert [util.meta(r)["name"] for r in dc.cleanup_plan(d, olds)] == ["r1", "r2", "r3"]


def test_proportional_scaling() -> None:
    d = deploy(20, 0, 1)  # scaled 10 -> 20 in the middle of a rollout
    sizes = dc.proportional_scale(d, rs("new", 5, 5, "2025-01-02T00:00:00Z"),
                                  [rs("old", 5, 5)])
    assert sum(sizes.values()) == 20 and sizes == {"new": 10, "old": 10}
    assert dc.proportional_scale(deploy(4), rs("new", 10, 10), []) == {"new": 4}


# -- daemonset ---------------------------------------------------------------------------------
def test_daemonset_one_pod_per_eligible_node_and_rolling() -> None:
    ds = {"metadata": {"name": "agent", "uid": "ds1", "generation": 1},
          "spec": {"selector": {"matchLabels": {"app": "agent"}},
                   "template": {"metadata": {"labels": {"app": "agent"}},
                                "spec": {"nodeSelector": {"role": "worker"}}}}}
    nodes = [node("n1"), node("n2"), node("n3", ready=False), node("n4", unschedulable=True)]
    for n in nodes:
        n["metadata"]["labels"]["role"] = "worker"
    nodes.append(node("n5"))  # no role label
    create, delete = dsc.plan_daemonset(ds, nodes, [])
    assert create == ["n1", "n2"] and delete == []
    h = dsc.ds_hash(ds)
    pods = [pod("a1", ready=True, node="n1", labels={"app": "agent", dsc.HASH: "old"}),
            pod("a2", ready=True, node="n2", labels={"app": "agent", dsc.HASH: "old"}),
            pod("a5", ready=True, node="n5", labels={"app": "agent", dsc.HASH: h})]
    create, delete = dsc.plan_daemonset(ds, nodes, pods)
    assert create == [] and [util.meta(p)["name"] for p in delete] == ["a5", "a1"]
    st = dsc.daemonset_status(ds, nodes, pods)
    assert st["desiredNumberScheduled"] == 2 and st["numberMisscheduled"] == 1
    assert st["updatedNumberScheduled"] == 0 and st["numberReady"] == 2


# -- statefulset ------------------------------------------------------------------------------
def sts(replicas: int, policy: str = "OrderedReady") -> dict:
    return {"metadata": {"name": "db", "uid": "s1", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "db", "podManagementPolicy": policy,
                     "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}}, "spec": {}}}}


def test_statefulset_ordered_create_delete_and_update() -> None:
    s = sts(3)
    rev = ssc.update_revision(s)
    lb = {"app": "db", ssc.HASH: rev}
    assert ssc.plan_statefulset(s, []) == [("create", 0, None)]
    p0 = pod("db-0", ready=False, labels=lb)
    assert ssc.plan_statefulset(s, [p0]) == []  # waits for db-0 to be Ready
    p0 = pod("db-0", ready=True, labels=lb)
    assert ssc.plan_statefulset(s, [p0]) == [("create", 1, None)]
    assert [a[:2] for a in ssc.plan_statefulset(sts(3, "Parallel"), [])] == [
        ("create", 0), ("create", 1), ("create", 2)]
    pods = [pod(f"db-{i}", ready=True, labels=lb) for i in range(5)]
    assert [a[:2] for a in ssc.plan_statefulset(s, pods)] == [("delete", 4)]
    old = [pod(f"db-{i}", ready=True, labels={"app": "db", ssc.HASH: "db-old"})
           for i in range(3)]
    assert [a[:2] for a in ssc.plan_statefulset(s, old)] == [("delete", 2)]
    st = ssc.statefulset_status(s, [pod(f"db-{i}", ready=True, labels=lb) for i in range(3)])
    assert st["currentRevision"] == st["updateRevision"] == rev and st["readyReplicas"] == 3
    assert ssc.ordinal(s, pod("db-01")) is None and ssc.ordinal(s, pod("db-10")) == 10


# -- job --------------------------------------------------------------------------------------
def job(**spec: object) -> dict:
    return {"metadata": {"name": "pi", "uid": "j1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never"}}, **spec}}


def test_job_parallelism_completion_and_backoff() -> None:
    j = job(completions=3, parallelism=2)
    assert jc.plan_job(j, [])["create"] == 2
    done = [pod("p1", phase="Succeeded"), pod("p2", phase="Succeeded")]
    plan = jc.plan_job(j, done)
    assert plan["create"] == 1 and plan["status"]["succeeded"] == 2
    plan = jc.plan_job(j, [*done, pod("p3", phase="Succeeded")])
    types = [c["type"] for c in plan["status"]["conditions"]]
    assert types == ["SuccessCriteriaMet", "Complete"] and plan["status"]["completionTime"]
    failing = job(backoffLimit=1)
    plan = jc.plan_job(failing, [pod("f1", phase="Failed"), pod("f2", phase="Failed")])
    assert [c["reason"] for c in plan["status"]["conditions"]] == ["BackoffLimitExceeded"] * 2
    assert jc.plan_job(job(), [pod("a", phase="Running")])["create"] == 0
    late = jc.plan_job(job(activeDeadlineSeconds=5), [],
                       at=util.parse_time(T0) + dt.timedelta(seconds=1))
    assert late["create"] == 1
    j2 = job(activeDeadlineSeconds=5)
    j2["status"] = {"startTime": T0}
    plan = jc.plan_job(j2, [pod("a")], at=util.parse_time(T0) + dt.timedelta(seconds=9))
    assert plan["status"]["conditions"][-1]["reason"] == "DeadlineExceeded"


# -- endpointslice ----------------------------------------------------------------------------
def test_endpointslices_conditions_and_named_ports() -> None:
    svc = {"metadata": {"name": "web", "namespace": "default", "uid": "svc1"},
           "spec": {"selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    p1 = pod("a", ready=True, ports=[{"name": "http", "containerPort": 8080}])
    p2 = pod("b", ready=True, ip="10.0.0.2", deleting=True,
             ports=[{"name": "http", "containerPort": 8080}])
    p3 = pod("c", ready=False, ip="10.0.0.3", ports=[{"name": "http", "containerPort": 9090}])
    p4 = pod("d", ready=True, ip="")  # no IP yet: skipped
    slices = esc.desired_slices(svc, [p1, p2, p3, p4])
    assert len(slices) == 2
    by_port = {ports[0]["port"]: eps for ports, eps in slices}
    conds = {e["targetRef"]["name"]: e["conditions"] for e in by_port[8080]}
    assert conds == {"a": {"ready": True, "serving": True, "terminating": False},
                     "b": {"ready": False, "serving": True, "terminating": True}}
    assert by_port[9090][0]["conditions"]["ready"] is False
    subsets = esc.endpoints_subsets(svc, [p1, p2, p3])
    assert [[a["ip"] for a in s.get("addresses", [])] for s in subsets] == [["10.0.0.1"], []]
    assert subsets[1]["notReadyAddresses"][0]["ip"] == "10.0.0.3"
    svc["spec"]["publishNotReadyAddresses"] = True
    eps = esc.desired_slices(svc, [p3])[0][1]
    assert eps[0]["conditions"]["ready"] is True
    many = [pod(f"p{i}", ready=True, ip=f"10.1.{i // 250}.{i % 250}",
                ports=[{"name": "http", "containerPort": 80}]) for i in range(250)]
    assert [len(e) for _, e in esc.desired_slices(svc, many)] == [100, 100, 50]
    assert esc.desired_slices(svc, []) == [([], [])]


# -- scheduler and node lifecycle ----------------------------------------------------------------
def test_scheduler_filters_and_spreads() -> None:
    nodes = [node("n1"), node("n2"), node("n3", ready=False),
             node("n4", taints=[{"key": "k", "effect": "NoSchedule"}])]
    p = pod("x", node="")
    assert sc.choose_node(p, nodes, {"n1": 2, "n2": 1}, {}) == ("n2", "")
    assert sc.choose_node(p, nodes, {}, {}) == ("n1", "")
    p["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "n9"}
    name, why = sc.choose_node(p, nodes, {}, {})
    assert name == "" and why.startswith("0/4 nodes are available")
    hp = pod("h", node="", ports=[{"containerPort": 80, "hostPort": 8080}])
    assert sc.choose_node(hp, nodes[:2], {}, {"n1": {("0.0.0.0", 8080, "TCP")}})[0] == "n2"


def test_node_lifecycle_stale_heartbeat() -> None:
    at = util.parse_time(T0) + dt.timedelta(seconds=60)
    n = node("n1")
    n["status"]["conditions"][0]["lastHeartbeatTime"] = T0
    lease = {"spec": {"renewTime": "2025-01-01T00:00:50.000000Z"}}
    assert nlc.stale_nodes([n], {}, at) == [n]
    assert nlc.stale_nodes([n], {"n1": lease}, at) == []
    assert nlc.stale_nodes([node("n2")], {}, at) == []
