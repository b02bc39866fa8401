/**
 * @vessel/guest: the test/demo guest images built from Debian packages (build-tiny.sh, build-debian.sh), for the
 * CLI's golden image (`vessel up`) and the tests that boot a guest.
 */
export { ensureTinyGuest, tinyQemuArgv, tinyOverlay, TINY_SERIAL, TINY_PORTS, BUILD_SCRIPT, type TinyGuest } from './tiny.ts';
export { ensureDebianGuest, DEBIAN_SERIAL, DEBIAN_BUILD_SCRIPT, type DebianGuest } from './debian.ts';
