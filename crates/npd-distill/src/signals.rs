//! How the process meets the operating system: Ctrl-C and libgomp's wait
//! policy.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::Control;

/// The OpenMP wait policy every method runs with unless the user chose
/// one, when the libtorch models own the cores: idle libgomp threads spin
/// (`ACTIVE`), which is what a libtorch thread pool that owns the cores
/// runs fastest with. Every method owns the cores in turn (NPD's default
/// schedule on one machine is colocated), so no method gets a setting that
/// only helps another.
pub const WAIT_POLICY: &str = "ACTIVE";

/// The wait policy when inference servers generate and score
/// (`engine.kind = "vllm"`): the trainer's threads sleep while they wait
/// (`PASSIVE`), since spinning threads would take the cores from servers
/// that share the machine. Every method runs with it in that case.
pub const SERVED_WAIT_POLICY: &str = "PASSIVE";

/// libgomp reads `OMP_WAIT_POLICY` only when it loads, so unless the user
/// chose a policy this restarts the process once, at the start, with
/// `policy` ([`WAIT_POLICY`] or [`SERVED_WAIT_POLICY`]; call it before any
/// libtorch work; it returns only when no restart was needed or it failed).
#[cfg(unix)]
pub fn set_wait_policy(policy: &str) {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("OMP_WAIT_POLICY", policy)
        .exec();
    eprintln!("warning: could not restart with OMP_WAIT_POLICY={policy}: {err}");
}

/// On other systems the policy is left as it is.
#[cfg(not(unix))]
pub fn set_wait_policy(_: &str) {}

/// Ctrl-C (or SIGTERM): the first one only raises [`Control::stop`]: a
/// running method finishes its step and writes a checkpoint, and the
/// preparation of the embedded models ends after its current step, so the
/// process exits through its normal path (status 130). [`crate::STOP_GRACE`]
/// later it raises [`Control::abandon_waits`]: a wait on a server (its
/// start, a call that hangs) ends then, and the servers npd started are
/// killed. A second one kills
/// the process at once (status 137, as SIGKILL): exiting normally from the
/// handler's thread would run libtorch's static destructors while its
/// threads still compute, which aborts with a C++ trace.
pub fn install(control: &Arc<Control>) {
    let c = Arc::clone(control);
    let installed = ctrlc::set_handler(move || {
        if c.stop.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted: killed at once; --resume continues from the last checkpoint");
            quit_now();
        }
        // Calls to servers get a moment to finish, then are abandoned.
        let abandon = Arc::clone(&c.abandon_waits);
        std::thread::spawn(move || {
            std::thread::sleep(crate::STOP_GRACE);
            abandon.store(true, Ordering::SeqCst);
        });
        if c.in_run.load(Ordering::SeqCst) {
            eprintln!(
                "\nstopping: finishing the current step and writing a checkpoint \
                 (Ctrl-C again to quit at once)"
            );
        } else {
            eprintln!("\nstopping after the current step (Ctrl-C again to quit at once)");
        }
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not write a checkpoint: {e}");
    }
}

/// Ends the process at once, as SIGKILL does: no destructor runs.
fn quit_now() -> ! {
    #[cfg(unix)]
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
    std::process::exit(130)
}
