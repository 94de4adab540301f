/// The one trait through which the machine's stateful components save and
/// restore themselves: the VM (irqchip, PIT, clock), each vCPU, the serial
/// port, the ready port's command channel, guest RAM (its layout; the
/// contents are the `memory` file), the rootfs window (its slot; the image
/// is named by the manifest) and the clone-info page (which saves
/// nothing: it is written fresh by every restore). A snapshot is then a
/// tree of plain serde `State` values, and a restore a walk over it in the
/// order docs/snapshot-format.md gives.
///
/// A diff snapshot's dirty ranges are the one thing added beside it, by the
/// snapshot code: they describe the `memory` file, not a component.
pub trait Persist: Sized {
    /// Plain data, serde-encodable, no file descriptors or pointers.
    type State;
    /// What restoring needs besides the state (fds, memory, a VM handle).
    type RestoreArgs<'a>;
    type Error;

    fn save(&self) -> Result<Self::State, Self::Error>;
    fn restore(args: Self::RestoreArgs<'_>, state: &Self::State) -> Result<Self, Self::Error>;
}
