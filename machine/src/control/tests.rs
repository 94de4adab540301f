use super::*;
use std::sync::mpsc;

#[test]
fn first_stop_reason_wins() {
    let latch = StopLatch::default();
    assert!(!latch.is_leaving());
    assert_eq!(latch.reason(), None);
    latch.stop(StopReason::GuestExit(3));
    latch.stop(StopReason::Requested);
    assert!(latch.is_leaving());
    assert_eq!(latch.reason(), Some(StopReason::GuestExit(3)));
    assert_eq!(latch.wait(), StopReason::GuestExit(3));
}

#[test]
fn latch_wait_times_out_unset_and_wakes_on_stop() {
    let latch = StopLatch::default();
    assert_eq!(latch.wait_timeout(Duration::from_millis(1)), None);
    let (waiting, started) = mpsc::channel();
    let waiter = latch.clone();
    let t = std::thread::spawn(move || {
        let _ = waiting.send(());
        waiter.wait()
    });
    started.recv().expect("waiter started");
    latch.stop(StopReason::Requested);
    assert_eq!(t.join().ok(), Some(StopReason::Requested));
    assert_eq!(
        latch.wait_timeout(Duration::ZERO),
        Some(StopReason::Requested)
    );
}

#[test]
fn exit_on_ready_stops() {
    let c = Control::new(Instant::now(), true);
    assert!(c.commands().mark_ready());
    assert!(c.commands().ready_at().is_some());
    assert!(c.latch().is_leaving());
    assert_eq!(c.latch().wait(), StopReason::ReadyReached);
}

#[test]
fn ready_wait_times_out_only_before_ready() {
    let c = Control::new(Instant::now(), false);
    assert!(!c
        .commands()
        .wait_ready(Instant::now() + Duration::from_millis(1)));
    c.commands().mark_ready();
    assert!(c.commands().wait_ready(Instant::now()));
}

#[test]
fn owner_event_timeout_stops_before_ready() {
    let c = Control::new(Instant::now(), false);
    let t = Duration::from_millis(1);
    assert!(matches!(
        c.requests().wait_event(Some(t)),
        OwnerEvent::Stopped(StopReason::Timeout(d)) if d == t
    ));
    assert_eq!(c.latch().reason(), Some(StopReason::Timeout(t)));
}

#[test]
fn owner_gets_requests_then_the_stop() {
    let c = Control::new(Instant::now(), false);
    let (reply, _answers) = mpsc::channel();
    c.requests().submit(OwnerRequest {
        kind: RequestKind::Pause,
        reply,
    });
    assert!(matches!(
        c.requests().wait_event(None),
        OwnerEvent::Request(OwnerRequest {
            kind: RequestKind::Pause,
            ..
        })
    ));
    c.latch().stop(StopReason::Requested);
    assert!(matches!(
        c.requests().wait_event(None),
        OwnerEvent::Stopped(StopReason::Requested)
    ));
}

/// The owner sends commands to a guest parked on another thread and
/// sees each acknowledgement together with the next park.
#[test]
fn command_ack_park_handshake() {
    let c = Control::new(Instant::now(), false);
    let guest = c.commands().clone();
    let t = std::thread::spawn(move || {
        let first = guest.wait_command(false);
        let second = guest.wait_command(true);
        let third = guest.wait_command(true);
        (first, second, third)
    });
    let commands = c.commands();
    assert!(commands.wait_parked(None));
    commands.send_command(7);
    assert!(commands.wait_acks_parked(1, None));
    assert!(commands.is_parked());
    commands.send_command(8);
    assert!(commands.wait_acks_parked(2, None));
    assert!(!commands.command_pending());
    c.latch().stop(StopReason::Requested);
    assert_eq!(t.join().ok(), Some((Some(7), Some(8), None)));
    // A stopped VM ends every wait, with false.
    assert!(!commands.wait_acks(3, None));
    assert!(!commands.wait_acks_parked(3, None));
}

#[test]
fn pause_releases_a_parked_guest_and_start_clears_it() {
    let c = Control::new(Instant::now(), false);
    let guest = c.commands().clone();
    let t = std::thread::spawn(move || guest.wait_command(false));
    assert!(c.commands().wait_parked(None));
    c.pause().request();
    assert!(c.latch().is_leaving());
    assert_eq!(t.join().ok(), Some(None));
    // Paused, the guest still counts as parked.
    assert!(c.commands().is_parked());
    assert_eq!(c.latch().reason(), None);
    c.pause().clear();
    assert!(!c.latch().is_leaving());
    assert!(!c.commands().is_parked());
    c.commands().send_command(9);
    assert_eq!(c.commands().wait_command(false), Some(9));
}

#[test]
fn commanded_guest_takes_queued_commands_first() {
    let c = Control::new(Instant::now(), false);
    let commands = c.commands();
    commands.send_command(1);
    assert_eq!(commands.parked_with(true), 1);
    assert!(commands.is_parked());
    assert_eq!(commands.take_command(), Some(1));
    assert_eq!(commands.take_command(), None);
    commands.unpark();
    assert!(!commands.is_parked());
    assert!(commands.first_ack_at().is_some());
}
