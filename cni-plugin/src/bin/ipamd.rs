fn main() {
    eprintln!("ipamd: not implemented yet");
    std::process::exit(1);
}
