"""Writes tests/fixtures/behavior/container_*.jsonl (+ .probes.json): python3 tests/support/gen_container_fixtures.py tests/fixtures/behavior"""
import json, sys
H = "0123456789abcdef" * 4
C = {"runtime": "podman", "id": H, "name": "web", "verified": True, "cgroup": f"/libpod_parent/libpod-{H}"}
CP = dict(C, privileged=True)
def ev(t, typ, pid, exe, comm, extra, container=C, ppid=1):
    d = {"type": typ, "time": f"2026-01-01T00:00:00.{t:06d}Z", "pid": pid, "tid": pid, "ppid": ppid, "uid": 0, "euid": 0, "gid": 0,
         "cgroup_id": 9000 if container else 1, "comm": comm, "start_ns": pid * 1000, "exe": exe}
    if container: d["container"] = container
    d.update(extra); return d
def ex(t, pid, exe, argv, container=C, ino=None):
    return ev(t, "exec", pid, exe, exe.rsplit("/",1)[1], {"filename": exe, "cwd": "/", "argv": argv, "exe_dev": 1, "exe_ino": ino or pid, "exe_nlink": 1}, container)
def op(t, pid, exe, path, flags=0o1101, container=C):
    return ev(t, "open", pid, exe, exe.rsplit("/",1)[1], {"path": path, "path2": "", "flags": flags, "mode": 0o644, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": 5}, container)
def conn(t, pid, exe, container=C):
    return ev(t, "connect", pid, exe, exe.rsplit("/",1)[1], {"family": "unix", "protocol": "", "saddr": "", "sport": 0, "daddr": "", "dport": 0, "backlog": 0, "fd": -1}, container)
BB = "/bin/busybox"
F = {
 "container_release_agent": (
   [ex(10, 200, BB, ["sh"]), op(20, 200, BB, "/tmp/cg/release_agent"), op(30, 200, BB, "/proc/sys/kernel/core_pattern", 0o2001)],
   [ex(10, 200, BB, ["sh"]), op(20, 200, BB, "/tmp/cg/release_agent", 0), op(30, 300, "/usr/bin/tee", "/proc/sys/kernel/core_pattern", container=None), op(40, 200, BB, "/tmp/notes/core_pattern")]),
 "container_host_write": (
   [ex(10, 200, BB, ["sh"]), op(20, 200, BB, "/host/tmp/x"), op(30, 200, BB, "/hostetc/passwd")],
   [ex(10, 200, BB, ["sh"]), op(20, 200, BB, "/data/x"), op(30, 200, BB, "/srv/app/out.txt"), op(40, 300, "/usr/bin/tee", "/srv/data/x", container=None)]),
 "container_host_namespace": (
   [ex(10, 200, BB, ["sh"]), ex(20, 201, BB, ["sh"])],
   [ex(10, 200, BB, ["sh"]), ex(20, 300, "/usr/bin/nsenter", ["nsenter", "-t", "1", "-m"], container=None)]),
 "container_block_mount": (
   [ex(10, 200, BB, ["sh"]), ex(20, 201, BB, ["ls", "/mnt"])],
   [ex(10, 202, BB, ["sh"]), ex(20, 203, BB, ["ls"])]),
 "container_runtime_socket": (
   [ex(10, 200, BB, ["sh"]), conn(20, 200, BB)],
   [ex(10, 202, BB, ["sh"]), conn(20, 202, BB), conn(30, 300, "/usr/bin/curl", container=None)]),
 "container_privileged": (
   [ex(10, 200, BB, ["sh"], container=CP), ex(20, 201, BB, ["ls"], container=CP)],
   [ex(10, 200, BB, ["sh"]), ex(20, 300, "/usr/bin/ls", ["ls"], container=None)]),
}
HOSTMI = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n22 27 0:21 / /proc rw - proc proc rw\n"
CTRMI = ("600 500 254:0 /tmp/rootfs / rw - ext4 /dev/vda rw\n601 600 0:21 / /proc rw - proc proc rw\n"
         "602 600 0:50 / /data rw - tmpfs tmpfs rw\n")
PROBES = {
 "container_host_write": {"pos": {"200": CTRMI + "603 600 254:0 / /host rw - ext4 /dev/vda rw\n604 600 254:0 /etc /hostetc rw - ext4 /dev/vda rw\n"},
                          "neg": {"200": CTRMI}},
 "container_host_namespace": {"ns": {"200": 4026532000, "201": 4026531832, "300": 4026531832}},
 "container_block_mount": {"pos": {"200": CTRMI, "201": CTRMI + "605 600 7:3 / /mnt rw - ext2 /dev/loop3 rw\n"},
                           "neg": {"202": CTRMI, "203": CTRMI + "606 600 254:0 /srv/data /vol rw - ext4 /dev/vda rw\n"}},
 "container_runtime_socket": {"pos": {"200": CTRMI + "607 600 0:25 /podman/podman.sock /run/podman.sock rw - tmpfs tmpfs rw\n"},
                              "neg": {"202": CTRMI + "608 600 0:25 /journal/dev-log /dev/log rw - tmpfs tmpfs rw\n"}},
}
out = sys.argv[1]
for name, (pos, neg) in F.items():
    for kind, evs in (("pos", pos), ("neg", neg)):
        with open(f"{out}/{name}.{kind}.jsonl", "w") as f:
            for e in evs: f.write(json.dumps(e) + "\n")
        pr = PROBES.get(name)
        if pr is not None:
            doc = {"host_mountinfo": HOSTMI, "host_mnt_ns": 4026531832,
                   "mountinfo": pr.get(kind, {}), "mnt_ns": pr.get("ns", {})}
            with open(f"{out}/{name}.{kind}.probes.json", "w") as f:
                json.dump(doc, f, indent=1); f.write("\n")
