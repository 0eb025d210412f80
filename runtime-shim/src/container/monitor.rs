//! The per-container monitor (what conmon is to CRI-O): a small process, started by the
//! daemon in its own session, that runs `runc create` with pipes as the container's
//! stdout/stderr, writes them to the CRI log file, reaps the container's init process as
//! a child subreaper and records its exit code. It outlives the daemon, so restarting
//! runtime-shim never touches running containers.
//!
//! It talks to the daemon through files in the container's directory:
//! `created` (init pid) or `create-failed` (runc's error), then `exit` (JSON), and
//! serves the container's stdio on its attach socket (see [`super::attach`]). A tty
//! container's terminal is the monitor's: runc hands the master to its console socket.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::attach::{self, Hub, Input};
use super::logs::{LineSplitter, LogWriter, Stream};

/// The hidden first argument that turns the runtime-shim binary into a monitor.
pub const MONITOR_ARG: &str = "__monitor";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    pub exit_code: i32,
    /// Unix nanoseconds.
    pub finished_at: i64,
    pub oom_killed: bool,
}

/// What the monitor needs; passed as JSON in one argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorSpec {
    pub id: String,
    pub bundle: PathBuf,
    pub log_path: PathBuf,
    /// The runc command line that creates the container.
    pub create_argv: Vec<String>,
    /// The runc command line that deletes it, run once it has exited (absent in the
    /// specs of monitors started by older daemons).
    #[serde(default)]
    pub delete_argv: Vec<String>,
    /// memory cgroup directory of the container, to tell OOM kills apart.
    pub memory_cgroup: Option<PathBuf>,
    /// Where to serve attach.
    pub attach_socket: PathBuf,
    /// The `--console-socket` of `create_argv`, for a container with a terminal.
    pub console_socket: Option<PathBuf>,
    /// Keep a stdin open for attach (ContainerConfig.stdin), closed after the first
    /// attach session's input ends if `stdin_once`.
    pub stdin: bool,
    pub stdin_once: bool,
}

pub fn created_file(bundle: &Path) -> PathBuf {
    bundle.join("created")
}
pub fn create_failed_file(bundle: &Path) -> PathBuf {
    bundle.join("create-failed")
}
pub fn exit_file(bundle: &Path) -> PathBuf {
    bundle.join("exit")
}
pub fn monitor_pid_file(bundle: &Path) -> PathBuf {
    bundle.join("monitor.pid")
}

/// Starts a monitor for `spec` detached from the daemon (own session, no stdio).
pub fn spawn(spec: &MonitorSpec) -> io::Result<u32> {
    use std::os::unix::process::CommandExt;
    // /proc/self/exe, not the path: it still runs this very binary after an upgrade
    // replaced (or a rebuild deleted) the file on disk.
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(MONITOR_ARG)
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(spec.bundle.join("monitor.log"))?);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    std::fs::write(monitor_pid_file(&spec.bundle), pid.to_string())?;
    // The monitor reaps itself: it is reparented when it finishes, and waiting here
    // would tie its lifetime to ours. A thread collects it while we live.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(pid)
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}

static REOPEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: i32) {
    REOPEN.store(true, Ordering::Relaxed);
}

/// The monitor process's main.
pub fn run(spec_json: &str) -> ! {
    let code = match monitor(spec_json) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("monitor: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn monitor(spec_json: &str) -> io::Result<()> {
    let spec: MonitorSpec = serde_json::from_str(spec_json).map_err(io::Error::other)?;
    // Become the parent of the container's init once `runc create` exits.
    // SAFETY: plain prctl call with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: installing an async-signal-safe handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
    }
    let writer = Arc::new(Mutex::new(LogWriter::open(&spec.log_path)?));
    let console = match &spec.console_socket {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            Some(std::os::unix::net::UnixListener::bind(path)?)
        }
        None => None,
    };
    // Without a terminal: pipes for output, and for input if the container wants it.
    // Close-on-exec, so only the ends handed over as stdio reach runc and the container:
    // a container holding its own stdin's write end would never see EOF.
    let (outputs, stdin_w, create_stdio) = if console.is_some() {
        (vec![], None, [Stdio::null(), Stdio::null(), Stdio::null()])
    } else {
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (stdin, stdin_w) = if spec.stdin {
            let (r, w) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
            (Stdio::from(r), Some(std::fs::File::from(w)))
        } else {
            (Stdio::null(), None)
        };
        (
            vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            stdin_w,
            [stdin, Stdio::from(out_w), Stdio::from(err_w)],
        )
    };

    let pid_file = spec.bundle.join("init.pid");
    let mut create = std::process::Command::new(&spec.create_argv[0]);
    let [stdin, stdout, stderr] = create_stdio;
    create
        .args(&spec.create_argv[1..])
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    let status = create.status()?;
    // The Command still holds our copies of the pipes' container ends: close them, or
    // the log pumps would never see EOF after the container exits.
    drop(create);
    if !status.success() {
        let msg = super::runc::last_error(&spec.bundle.join("runc.log"))
            .unwrap_or_else(|| format!("runc create exited with {status}"));
        write_atomic(&create_failed_file(&spec.bundle), msg.as_bytes())?;
        return Ok(());
    }
    // runc sent the terminal before `create` returned: it waits in the backlog.
    let (outputs, input) = match (console, stdin_w) {
        (Some(listener), _) => {
            listener.set_nonblocking(true)?;
            let (conn, _) = listener.accept()?;
            conn.set_nonblocking(false)?;
            let master = super::console::receive_master(&conn)?;
            if let Some(p) = &spec.console_socket {
                let _ = std::fs::remove_file(p);
            }
            let output = master.try_clone()?;
            (vec![(output, Stream::Stdout)], Input::Terminal(master))
        }
        (None, Some(w)) => (outputs, Input::Pipe(Mutex::new(Some(w)))),
        (None, None) => (outputs, Input::None),
    };
    let init_pid: i32 = std::fs::read_to_string(&pid_file)?
        .trim()
        .parse()
        .map_err(io::Error::other)?;
    let hub = Arc::new(Hub::new(input, spec.stdin_once));
    let _ = std::fs::remove_file(&spec.attach_socket);
    let listener = std::os::unix::net::UnixListener::bind(&spec.attach_socket)?;
    std::thread::spawn({
        let hub = hub.clone();
        move || hub.serve(listener)
    });
    write_atomic(&created_file(&spec.bundle), init_pid.to_string().as_bytes())?;

    // Reopen promptly on SIGUSR1 even when the container is silent.
    {
        let writer = writer.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(20));
                if REOPEN.swap(false, Ordering::Relaxed) {
                    let _ = writer.lock().unwrap().reopen();
                }
            }
        });
    }
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(fd, stream)| {
            let writer = writer.clone();
            let hub = hub.clone();
            std::thread::spawn(move || pump(fd, stream, &writer, &hub))
        })
        .collect();

    let exit_code = reap(init_pid);
    for p in pumps {
        let _ = p.join();
    }
    hub.close_all();
    let _ = std::fs::remove_file(&spec.attach_socket);
    let oom_killed = spec
        .memory_cgroup
        .as_deref()
        .and_then(|d| std::fs::read_to_string(d.join("memory.oom_control")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill ").map(|n| n.trim() != "0"))
        })
        .unwrap_or(false);
    let finished_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64;
    let rec = ExitRecord {
        exit_code,
        finished_at,
        oom_killed,
    };
    write_atomic(&exit_file(&spec.bundle), &serde_json::to_vec(&rec)?)?;
    // runc's state and cgroups of an exited container serve nothing; deleting them here,
    // as containerd's shim deletes its task at the exit, keeps that work off
    // RemoveContainer. A failure is left to RemoveContainer's forced delete.
    if let Some((program, args)) = spec.delete_argv.split_first() {
        let _ = std::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

/// Waits for the container's init, reaping any other orphan that lands on us.
pub(crate) fn reap(init_pid: i32) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == init_pid => return code,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid.as_raw() == init_pid => {
                return 128 + sig as i32;
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            // No children left: init was not ours to reap (should not happen).
            Err(_) => return 255,
        }
    }
}

/// One output of the container to the log and to attached clients, until EOF (or EIO:
/// a terminal whose last slave closed).
fn pump(fd: OwnedFd, stream: Stream, writer: &Mutex<LogWriter>, hub: &Hub) {
    let mut file = std::fs::File::from(fd);
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 32 * 1024];
    let mut emit = |text: &[u8], complete: bool| {
        let mut w = writer.lock().unwrap();
        if REOPEN.swap(false, Ordering::Relaxed) {
            w.reopen()?;
        }
        w.record(stream, text, complete)
    };
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hub.broadcast(
                    match stream {
                        Stream::Stdout => attach::STDOUT,
                        Stream::Stderr => attach::STDERR,
                    },
                    &buf[..n],
                );
                if splitter.feed(&buf[..n], &mut emit).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = splitter.finish(&mut emit);
}
