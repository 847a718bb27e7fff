//! `sqlx::migrate!` embeds `migrations/` when the crate is compiled; cargo does not see
//! that directory by itself, so a migration added or edited would not be embedded until
//! some source file changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
