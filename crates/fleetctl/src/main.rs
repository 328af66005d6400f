fn main() {
    std::process::exit(fleetctl::run(std::env::args_os()));
}
