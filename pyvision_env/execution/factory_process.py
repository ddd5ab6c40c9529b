"""The kernel factory's own process: imports once, then forks every kernel (run as a script, never imported).

The engine starts this file inside one bubblewrap sandbox (see :mod:`pyvision_env.execution.factory`) and talks
to it over a Unix socket: a JSON line per request, the kernel's cgroup files passed as descriptors. Before it
answers anything the factory imports what every kernel needs (ipykernel and IPython, the preload's modules),
loads ipykernel's application configuration (command line, configuration files, profile) and freezes the garbage
collector, so that forked kernels share those pages and skip that part of their start-up. It never opens a ZMQ
context, a thread or a socket other than its control socket: each kernel makes its own after the fork.

Each kernel is two processes:

* the *init*, forked from the factory as PID 1 of a new PID namespace: joins the kernel's cgroups, unshares its
  own mount, IPC, network and UTS namespaces, mounts its private ``/tmp``, ``/dev/shm``, working directory and
  ``/proc`` (and hides the other kernels' directories), drops its capabilities, forks the kernel, and then only
  waits (``sleep``, a few hundred KiB): the kernel, its child, stays a zombie when it ends, so its exit status
  can be read from ``/proc``; killing the init ends the namespace, and the init dies with the factory;
* the *kernel*, PID 2: a new session, the kernel's resource limits, no capabilities, its own environment,
  then ipykernel's application started in process, which binds its sockets in the kernel's directory.

Each of them is a fork of a process the size of the factory, which costs the machine a few milliseconds (its page
tables are copied, and freed at ``exec`` or exit), so a kernel has no third process.

Messages (JSON lines):

* first ``{"preload": [...], "setup": source, "flags": [...], "input_loader": source, "isolate": bool}`` ->
  ``{"ok": bool, "error": ..., "pid": ...}`` (``flags``: ipykernel's command line, less the connection file);
* per kernel ``{"kernel_dir", "connection_file", "env", "limits"}`` -> ``{"ok": true, "init": PID,
  "kernel": PID}`` or ``{"ok": false, "error": "..."}``;
* per input template ``{"op": "template", "images": {name: path}}`` -> ``{"ok": true, "pid": PID}`` with the
  template's socket attached; the template says first whether its images loaded, then answers kernel requests.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import json
import os
import resource
import shutil
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import CodeType

KERNEL_MODULES = (
    "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger",
    "IPython.core.completerlib", "IPython.core.debugger", "IPython.core.oinspect", "IPython.extensions.storemagic",
    "tornado.gen", "tornado.locks", "tornado.queues", "tornado.platform.asyncio", "psutil", "faulthandler",
    "pdb", "pydoc", "http.server", "xmlrpc.server", "matplotlib.backends.backend_agg",
)
"""What ipykernel imports while it starts (found by diffing ``sys.modules`` over a kernel's start-up)."""

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
INIT_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET
"""What a kernel's init unshares for itself (it is forked into a new PID namespace)."""
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MOUNT_FLAGS_OF_STATVFS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                          (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                          (os.ST_RELATIME, MS_RELATIME))
PR_SET_PDEATHSIG, PR_SET_NAME, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 15, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Recipe:
    """What every kernel forked by this process gets: the compiled setup, its own namespaces (``isolate``), the
    init's ``sleep`` program, and input images already decoded (in an input template)."""

    setup: CodeType
    isolate: bool
    sleep: str | None
    decoded_inputs: dict = field(default_factory=dict)


def checked(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    arguments = [None if value is None else value.encode() for value in (source, target, fstype, data)]
    checked(libc.mount(arguments[0], arguments[1], arguments[2], flags, arguments[3]), f"mount {target}")


def die_with_parent() -> None:
    checked(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def set_process_name(name: bytes) -> None:
    """What ``ps``, ``top`` and psutil's ``name()`` show (the command line stays the factory's)."""
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


# --- start-up -------------------------------------------------------------------------------------

def warm_up(preload: list[str], setup: str, flags: list[str]) -> CodeType:
    """Import what every kernel needs, configure ipykernel's application with ``flags``, run the preload
    statements once (in a scratch namespace), and compile the kernels' setup (which each kernel runs in its own
    namespace)."""
    sys.modules["debugpy"] = None  # kernels have no debugger: ipykernel makes none, and every fork is smaller
    for name in KERNEL_MODULES:
        try:
            __import__(name)
        except ImportError:
            pass  # optional (psutil): the kernel does without
    configure_application(flags)
    namespace: dict = {}
    for statement in preload:
        exec(compile(statement, "<preload>", "exec"), namespace)  # the engine's own configuration
    code = compile(setup, "<pyvision-kernel-setup>", "exec")
    gc.collect()
    gc.freeze()  # objects made so far are never traversed again: the kernels' collector leaves their pages shared
    return code


def configure_application(flags: list[str]) -> None:
    """Do the part of ipykernel's start-up that is the same for every kernel and makes no thread or socket: parse
    ``flags``, read the configuration files, set up the profile (shared by the forked kernels). Each kernel then
    sets its connection file and runs the rest (:func:`start_configured_application`)."""
    from ipykernel.kernelapp import IPKernelApp
    from IPython.core.application import BaseIPythonApplication

    BaseIPythonApplication.initialize(IPKernelApp.instance(), flags)


def start_configured_application(connection_file: str, setup: CodeType, decoded_inputs: dict) -> None:
    """In a kernel: ipykernel's application, configured in the factory, initialised for ``connection_file`` (its
    sockets, threads, kernel and shell), the engine's setup run in the shell's namespace, and then served until
    the kernel is shut down."""
    from ipykernel.kernelapp import IPKernelApp
    from IPython.core.application import BaseIPythonApplication

    def configured(app: BaseIPythonApplication, argv: list[str] | None = None) -> None:
        """Done once for all kernels, in the factory (:func:`configure_application`)."""

    BaseIPythonApplication.initialize = configured  # what IPKernelApp.initialize calls first
    app = IPKernelApp.instance()
    app.connection_file = connection_file
    app.initialize([])
    exec(setup, app.shell.user_ns)  # the engine's own preload and helpers
    app.shell.user_ns["_pyvision_decoded_inputs"] = dict(decoded_inputs)
    app.start()


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def self_test(isolate: bool) -> str | None:
    """Fork once the way kernels are forked (namespaces and mounts when ``isolate``); the reason it fails."""
    read_end, write_end = os.pipe()
    child = fork_into_new_pid_namespace() if isolate else os.fork()
    if child == 0:
        os.close(read_end)
        try:
            if isolate:
                checked(libc.unshare(INIT_NAMESPACES), "unshare")
                mount(None, "/", None, MS_REC | MS_PRIVATE)
                mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV)
                bring_loopback_up()
            os.write(write_end, b"ok")
        except BaseException as exc:  # noqa: BLE001 - reported to the engine
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode()[:1000])
        os._exit(0)
    os.close(write_end)
    answer = read_all(read_end).decode("utf-8", "replace")
    os.waitpid(child, 0)
    return None if answer == "ok" else answer or "the test child died"


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


# --- one kernel -----------------------------------------------------------------------------------

def fork_kernel(request: dict, cgroup_fds: list[int], control: socket.socket, recipe: Recipe) -> dict:
    """Fork the kernel's init (in a new PID namespace when isolating), which forks the kernel; their pids, or the
    error the init hit."""
    read_end, write_end = os.pipe()
    init = fork_into_new_pid_namespace() if recipe.isolate else os.fork()
    if init == 0:
        try:
            os.close(read_end)
            control.close()
            become_init(request, cgroup_fds, recipe, write_end)
        except BaseException:  # noqa: BLE001 - any failure ends this child with its message
            os.write(write_end, traceback.format_exc(limit=4)[-3000:].encode())
        os._exit(1)
    os.close(write_end)
    for fd in cgroup_fds:
        os.close(fd)
    answer = read_all(read_end)
    if answer != b"k":
        error = answer.decode("utf-8", "replace") or "the kernel's init died before it forked the kernel"
        return {"ok": False, "error": error}
    with open(f"/proc/{init}/task/{init}/children") as children:
        kernel = int(children.read().split()[0])  # the kernel's pid as the engine sees it
    return {"ok": True, "init": init, "kernel": kernel}


def fork_into_new_pid_namespace() -> int:
    """``os.fork()`` whose child is PID 1 of a new PID namespace; this process's later children stay in its own
    namespace."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY)
    try:
        checked(libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        child = -1
        try:
            child = os.fork()
        finally:
            if child != 0:  # the factory (or the fork failed): back to forking into its own namespace
                checked(libc.setns(own, CLONE_NEWPID), "setns(CLONE_NEWPID)")
    finally:
        os.close(own)
    return child


def wait_for_death(sleep: str | None) -> None:
    """Do nothing until killed, in as little memory as possible (``sleep``, else this interpreter)."""
    if sleep is not None:
        os.execv(sleep, ["sleep", "infinity"])
    while True:
        signal.pause()


def private_mounts(kernel_dir: str, disk_bytes: int) -> None:
    """This kernel's view: a private /tmp and /dev/shm, its own directory (with a private, size-limited working
    directory and read-only inputs) and none of the other kernels' directories."""
    own = os.open(kernel_dir, os.O_PATH | os.O_DIRECTORY)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    size = f"size={disk_bytes},mode=1777"
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, size)
    if os.path.isdir("/dev/shm"):
        mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, size)
    engine_root = os.path.dirname(kernel_dir)
    if os.path.isdir(engine_root):  # not already hidden by the new /tmp
        mount("tmpfs", engine_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    os.makedirs(kernel_dir, exist_ok=True)
    mount(f"/proc/self/fd/{own}", kernel_dir, None, MS_BIND)
    os.close(own)
    mount("tmpfs", os.path.join(kernel_dir, "work"), "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_bytes},mode=700")
    inputs = os.path.join(kernel_dir, "inputs")
    mount(inputs, inputs, None, MS_BIND)
    remount_read_only(inputs, MS_NOSUID | MS_NODEV)
    if os.path.isdir("/dev"):  # the factory's /dev is shared by all its kernels: read-only here
        mount("/dev", "/dev", None, MS_BIND | MS_REC)
        remount_read_only("/dev", MS_NOSUID)


def remount_read_only(path: str, extra_flags: int) -> None:
    """Make the bind mount at ``path`` read-only, keeping the flags it has (in a user namespace, the kernel
    refuses a remount that would drop flags a more privileged namespace set)."""
    current = os.statvfs(path).f_flag
    kept = sum(mount_flag for statvfs_flag, mount_flag in MOUNT_FLAGS_OF_STATVFS if current & statvfs_flag)
    mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | kept | extra_flags)


def bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def become_init(request: dict, cgroup_fds: list[int], recipe: Recipe, report: int) -> None:
    """The kernel's init (PID 1 of its namespace when isolating): join the kernel's cgroups, isolate the
    namespace, drop every capability, fork the kernel, say ``k`` on ``report``, and then only wait (as ``sleep``).
    The kernel stays its child: when the kernel ends it is kept as a zombie, from which the engine reads its exit
    status, until the engine kills the init and with it the namespace."""
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:
        os._exit(1)  # the factory is already gone
    for fd in cgroup_fds:
        os.write(fd, b"0")
        os.close(fd)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(number, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # not ignored: the kernel's zombie must stay for its status
    if recipe.isolate:
        checked(libc.unshare(INIT_NAMESPACES), "unshare")
        private_mounts(request["kernel_dir"], int(request["limits"]["disk_bytes"]))
        checked(libc.sethostname(b"sandbox", 7), "sethostname")
        bring_loopback_up()
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV)
        drop_privileges()
    kernel = os.fork()
    if kernel == 0:
        os.close(report)
        become_kernel(request, recipe)
    os.write(report, b"k")
    os.close(report)
    os.closerange(0, 3)
    wait_for_death(recipe.sleep)


def become_kernel(request: dict, recipe: Recipe) -> None:
    """The kernel: limits, no privileges, its own descriptors and environment, then ipykernel in this process,
    which runs the setup in its namespace before it answers anyone."""
    kernel_dir = request["kernel_dir"]
    try:
        die_with_parent()  # its init (without a namespace of its own, nothing else would end it)
        os.setsid()
        set_process_name(b"pyvision-kernel")
        for number in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(number, signal.SIG_DFL)
        log = os.open(os.path.join(kernel_dir, "kernel.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        limits = request["limits"]
        for which, value in ((resource.RLIMIT_AS, limits["memory_bytes"]),
                             (resource.RLIMIT_FSIZE, limits["max_file_bytes"]),
                             (resource.RLIMIT_NOFILE, limits["max_open_files"]), (resource.RLIMIT_CORE, 0)):
            _, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
        if recipe.isolate:
            drop_privileges()
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(os.path.join(kernel_dir, "work"))
        sys.argv = ["ipykernel_launcher", "-f", request["connection_file"]]
        reseed_random_state()
        start_configured_application(request["connection_file"], recipe.setup, recipe.decoded_inputs)
    except BaseException:  # noqa: BLE001 - the engine reads the log tail when the kernel does not come up
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def drop_privileges() -> None:
    """No capabilities now or after any exec (bounding set emptied, no new privileges)."""
    for capability in range(64):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    checked(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = struct.pack("II", LINUX_CAPABILITY_VERSION_3, 0)
    data = ctypes.create_string_buffer(24)  # two empty {effective, permitted, inheritable} sets
    checked(libc.capset(ctypes.c_char_p(header), data), "capset")


def reseed_random_state() -> None:
    """Forked kernels would otherwise share the factory's random state (``random`` is reseeded by Python)."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


# --- the request loop -----------------------------------------------------------------------------

def serve(control: socket.socket) -> None:
    set_process_name(b"pyvision-forks")  # at most 15 characters
    config = json.loads(receive(control)[0])
    isolate = bool(config["isolate"])
    recipe, open_input = None, None
    try:
        setup = warm_up(config["preload"], config["setup"], config["flags"])
        open_input = source_function(config["input_loader"], "_pyvision_open_input")
        recipe = Recipe(setup, isolate, shutil.which("sleep"))
        failure = (f"the factory has {threads()} threads after its imports (a fork would copy them half-made)"
                   if threads() != 1 else self_test(isolate))
    except BaseException:  # noqa: BLE001
        failure = traceback.format_exc(limit=4)[-3000:]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # inits and templates are reaped by the system
    send(control, {"ok": failure is None, "error": failure, "pid": os.getpid()})
    if failure is None:
        serve_requests(control, recipe, open_input)


def serve_requests(control: socket.socket, recipe: Recipe, open_input: Callable | None) -> None:
    """Fork a kernel per request; with ``open_input`` (the factory, not a template) also make input templates."""
    while True:
        message, fds = receive(control)
        if not message:
            return  # the engine closed its end
        request = json.loads(message)
        if request.get("op") == "template" and open_input is not None:
            reply, engine_end = make_template(request, control, recipe, open_input)
            send(control, reply, [engine_end])
            os.close(engine_end)
        else:
            send(control, fork_kernel(request, fds, control, recipe))


def make_template(request: dict, control: socket.socket, recipe: Recipe, open_input: Callable) -> tuple[dict, int]:
    """Fork an input template: a process that decodes one task's images once and then forks that task's kernels
    (each binds the decoded images, sharing their pages). It answers on a socket of its own, whose other end goes
    to the engine; its first message says whether the images loaded."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    template = os.fork()
    if template == 0:
        try:
            control.close()
            ours.close()
            die_with_parent()
            set_process_name(b"pyvision-inputs")
            decoded = {name: open_input(path) for name, path in request["images"].items()}
        except BaseException:  # noqa: BLE001 - reported to the engine
            send(theirs, {"ok": False, "error": traceback.format_exc(limit=4)[-3000:]})
            os._exit(1)
        gc.freeze()
        send(theirs, {"ok": True, "pid": os.getpid()})
        serve_requests(theirs, replace(recipe, decoded_inputs=decoded), None)
        os._exit(0)
    theirs.close()
    engine_end = ours.detach()
    return {"ok": True, "pid": template}, engine_end


def source_function(source: str, name: str) -> Callable:
    """The function ``name`` defined by ``source`` (code the engine sends, as it sends it to kernels)."""
    namespace: dict = {}
    exec(compile(source, f"<{name}>", "exec"), namespace)
    return namespace[name]


def receive(control: socket.socket) -> tuple[bytes, list[int]]:
    """One request: a JSON line, with descriptors attached to its first bytes."""
    message, fds, _, _ = socket.recv_fds(control, 1 << 20, 16)
    while message and not message.endswith(b"\n"):
        more = control.recv(1 << 20)
        if not more:
            break
        message += more
    return message.strip(), list(fds)


def send(control: socket.socket, reply: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(reply).encode() + b"\n"
    sent = socket.send_fds(control, [data], fds) if fds else 0
    control.sendall(data[sent:])


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
