//! vmfork-agent: the Linux guest's side of the guest ABI (docs/guest-abi.md,
//! docs/linux-guest.md). The rootfs's `/init` execs it as PID 1 once the
//! filesystems are up. It
//! - signals the ready point (`REDY` on the ready port), then parks the
//!   vCPU in the port's `in`, the point a template is taken at;
//! - on every resume (RESUMED) makes the clone unique from the clone-info
//!   page: fresh entropy credited to the kernel's pool and a CRNG reseed,
//!   `CLOCK_REALTIME` from the host, and the clone id in
//!   `/run/vmfork/clone-id`;
//! - runs EXEC requests from the mailbox (the exec protocol);
//! - for a Lambda template, starts the function the VMM left in the
//!   mailbox before READY, under the Lambda Runtime API, and hands it one
//!   invocation per Lambda EXEC (invoke.rs, lambda.rs);
//! - ends the VM on EXIT, after a sync, and likewise when `poweroff`,
//!   `halt` or `reboot` signal it (the VMM cannot power-cycle a guest).
//!
//! It must never exit: PID 1 exiting panics the kernel.

#![deny(unsafe_op_in_unsafe_fn)]

mod exec;
mod invoke;
mod lambda;
mod lambda_http;
mod mailbox;
mod sys;

use std::io::Write;
use std::time::Duration;

use vmfork_guest_abi as abi;

/// Where programs in the guest find their clone's id.
const CLONE_ID_FILE: &str = "/run/vmfork/clone-id";
/// The ports the agent uses: the ready and ack-and-wait ports (and the
/// console doorbells beside them, unused for now).
const PORTS: (u16, u16) = (abi::READY_PORT, 0x10);

fn say(line: &str) {
    // The console is the UART: one exit per byte, so keep lines few.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "vmfork-agent: {line}");
    let _ = out.flush();
}

/// PID 1 has nowhere to go: report and idle so the VMM's timeout or its
/// owner ends the VM with the message on the console.
fn idle_forever(why: &str) -> ! {
    say(why);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        sys::reap_orphans();
    }
}

struct Agent {
    mem: mailbox::PhysMem,
    urandom: std::fs::File,
    invocations: u32,
    /// The Lambda function started at boot, if the VMM asked for one.
    function: Option<invoke::Function>,
}

impl Agent {
    /// Applies the clone-info page: id, entropy, clock. A plain restore
    /// (id 0) gets fresh entropy and the time too.
    fn resumed(&self) {
        let info = match self.mem.clone_info() {
            Ok(Some(info)) => info,
            Ok(None) => return say("resumed without a clone-info record"),
            Err(e) => return say(&format!("error: reading the clone-info page: {e}")),
        };
        let mut entropy = [0u8; 32];
        for (i, w) in info.entropy.iter().enumerate() {
            entropy[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        if let Err(e) = sys::add_entropy_and_reseed(&self.urandom, &entropy) {
            say(&format!("error: reseeding the kernel's random pool: {e}"));
        }
        if let Err(e) = sys::set_realtime(info.host_unix_ns) {
            say(&format!("error: setting the clock: {e}"));
        }
        let written = std::fs::create_dir_all("/run/vmfork").and_then(|()| {
            let tmp = format!("{CLONE_ID_FILE}.tmp");
            std::fs::write(&tmp, format!("{}\n", info.clone_id))?;
            std::fs::rename(&tmp, CLONE_ID_FILE)
        });
        if let Err(e) = written {
            say(&format!("error: writing {CLONE_ID_FILE}: {e}"));
        }
    }

    /// Runs the mailbox's exec request and writes its result.
    fn exec(&mut self) {
        self.invocations = self.invocations.wrapping_add(1);
        let answer = match self.mem.request() {
            Err(e) => Err(format!("reading the request: {e}")),
            Ok(Err(why)) => Err(why),
            Ok(Ok(body)) => match abi::ExecRequest::parse(&body) {
                Err(e) => Err(format!("exec request: {}", e.reason())),
                Ok(request) => match request.header.flags {
                    abi::EXEC_FLAG_LAMBDA_INVOKE => match &mut self.function {
                        Some(f) => f.invoke(&request).map(|outcome| outcome.encode()),
                        None => Err("no Lambda function runs in this guest \
                                     (its template was not built with --lambda)"
                            .into()),
                    },
                    abi::EXEC_FLAG_LAMBDA_INIT => {
                        Err("a Lambda function is started at boot, not by EXEC".into())
                    }
                    _ => Ok(exec::run(&request).encode()),
                },
            },
        };
        let (status, body) = match answer {
            Ok(body) => (abi::STATUS_OK, body),
            Err(why) => (abi::STATUS_BAD_REQUEST, why.into_bytes()),
        };
        if let Err(e) = self.mem.respond(status, &body, self.invocations) {
            say(&format!("error: writing the response: {e}"));
        }
    }

    /// Starts the Lambda function the VMM wrote into the mailbox before
    /// boot, if it did, and returns once it waits for its first
    /// invocation. One that fails gets its result written back and the VM
    /// ended, so the template build reports it.
    fn start_function(&mut self) {
        let Ok(Ok(body)) = self.mem.request() else {
            return;
        };
        let request = match abi::ExecRequest::parse(&body) {
            Ok(r) if r.header.flags == abi::EXEC_FLAG_LAMBDA_INIT => r,
            _ => return,
        };
        say("starting the Lambda function");
        let echo = |bytes: &[u8]| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        };
        match invoke::start(&request, echo) {
            Ok(function) => {
                say("the Lambda function waits for its first invocation");
                self.function = Some(function);
            }
            Err(outcome) => {
                say("the Lambda function failed during init");
                if let Err(e) = self.mem.respond(abi::STATUS_OK, &outcome.encode(), 0) {
                    say(&format!("error: writing the init result: {e}"));
                }
                sys::outl(abi::READY_PORT, abi::EXIT_TAG | 1);
                idle_forever("the VMM did not stop the VM after a failed init");
            }
        }
    }

    /// A built-in function request: the Linux guest has none.
    fn no_function(&mut self) {
        self.invocations = self.invocations.wrapping_add(1);
        let why = b"the Linux guest agent has no built-in functions; use EXEC";
        if let Err(e) = self
            .mem
            .respond(abi::STATUS_BAD_REQUEST, why, self.invocations)
        {
            say(&format!("error: writing the response: {e}"));
        }
    }
}

fn main() {
    if let Err(e) = sys::open_ports(PORTS.0, PORTS.1) {
        idle_forever(&format!(
            "error: no access to the VMM's ports ({e}); the kernel needs CONFIG_X86_IOPL_IOPERM"
        ));
    }
    let mem = match mailbox::PhysMem::open() {
        Ok(mem) => mem,
        Err(e) => idle_forever(&format!(
            "error: opening /dev/mem ({e}); the kernel needs CONFIG_DEVMEM"
        )),
    };
    let urandom = match std::fs::OpenOptions::new().write(true).open("/dev/urandom") {
        Ok(f) => f,
        Err(e) => idle_forever(&format!("error: opening /dev/urandom: {e}")),
    };
    let mut agent = Agent {
        mem,
        urandom,
        invocations: 0,
        function: None,
    };
    sys::end_vm_on_power_signals();
    agent.start_function();
    say("READY");
    sys::outl(abi::READY_PORT, abi::READY);
    let mut acknowledge = false;
    loop {
        // Children of finished requests and orphans are reaped while no
        // request's child is being waited for; never beside a Lambda
        // function, whose exit status its own waiter must get (a clone
        // lives for one invocation, so its zombies go with it).
        if agent.function.is_none() {
            sys::reap_orphans();
        }
        let port = if acknowledge {
            abi::ACK_WAIT_PORT
        } else {
            abi::READY_PORT
        };
        let command = sys::inl(port);
        acknowledge = true;
        match abi::command_opcode(command) {
            _ if command == abi::CMD_NO_VMM => {
                idle_forever("no vmfork VMM behind the ready port; idling")
            }
            abi::CMD_RESUMED => agent.resumed(),
            abi::CMD_EXEC => agent.exec(),
            abi::CMD_INVOKE => agent.no_function(),
            abi::CMD_RESUME_INVOKE => {
                agent.resumed();
                agent.no_function();
            }
            abi::CMD_EXIT => {
                sys::sync_all();
                sys::outl(abi::READY_PORT, abi::EXIT_TAG);
                idle_forever("the VMM did not stop the VM at exit");
            }
            // PING, DIRTY and anything unknown: acknowledged, as the
            // protocol asks of every command but EXIT.
            _ => {}
        }
    }
}
