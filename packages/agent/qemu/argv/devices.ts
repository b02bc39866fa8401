/**
 * The clock and the service devices every VM may have besides its disks and NICs: video, serial
 * console, guest agent channel, balloon, RNG, watchdog, input devices and sgabios. Their chardevs
 * are the process layer's (ids in ids.ts); only what the guest sees is written here.
 */
import { supportedStrings, checkName, claimId, isSet, opt, readBool, readInt, readList, readObj, readStr, virtio, type Configurator } from './context.ts';
import { GUEST_AGENT_CHARDEV_ID, SERIAL_CHARDEV_ID, deviceId } from './ids.ts';

const RTC_TICK_POLICIES = supportedStrings('domain.clock.timer.rtc.tickPolicy');
const PIT_TICK_POLICIES = supportedStrings('domain.clock.timer.pit.tickPolicy');

/** -rtc (UTC or a time zone through TZ), HPET and the PIT's lost-tick policy. */
export const clock: Configurator = (ctx) => {
  const { c } = ctx;
  const spec = readObj(ctx.dom.clock, 'spec.domain.clock', c) ?? {};
  const rtc: Array<[string, string | undefined]> = [['base', 'utc']];
  const utc = readObj(spec.utc, 'spec.domain.clock.utc', c);
  const tz = readStr(spec.timezone, 'spec.domain.clock.timezone', c);
  if (utc && tz !== undefined) c.invalid('spec.domain.clock', 'utc+timezone', 'set either utc or timezone, not both');
  if (utc) {
    const off = readInt(utc.offsetSeconds, 'spec.domain.clock.utc.offsetSeconds', c, -(2 ** 31), 2 ** 31 - 1);
    if (off !== undefined && off !== 0) c.value('spec.domain.clock.utc.offsetSeconds', off, 'only 0 is supported by Vessel yet');
  }
  if (tz !== undefined) {
    // QEMU's localtime follows TZ: the process layer must start QEMU with the returned env.
    if (/^[A-Za-z0-9_+-]+(\/[A-Za-z0-9_+-]+)*$/.test(tz)) {
      rtc[0] = ['base', 'localtime'];
      ctx.env.TZ = tz;
    } else {
      c.invalid('spec.domain.clock.timezone', tz, 'must be a time zone name such as Europe/Berlin');
    }
  }
  const timers: string[] = [];
  const timer = readObj(spec.timer, 'spec.domain.clock.timer', c) ?? {};
  const hpet = readObj(timer.hpet, 'spec.domain.clock.timer.hpet', c);
  if (hpet && readBool(hpet.present, 'spec.domain.clock.timer.hpet.present', c) === false) ctx.machineProps.push(['hpet', false]);
  const rtcT = readObj(timer.rtc, 'spec.domain.clock.timer.rtc', c);
  if (rtcT) {
    if (readBool(rtcT.present, 'spec.domain.clock.timer.rtc.present', c) === false)
      c.value('spec.domain.clock.timer.rtc.present', false, 'the RTC cannot be removed');
    const tp = readStr(rtcT.tickPolicy, 'spec.domain.clock.timer.rtc.tickPolicy', c);
    if (tp === 'catchup') rtc.push(['driftfix', 'slew']);
    else if (tp !== undefined && tp !== 'delay') c.value('spec.domain.clock.timer.rtc.tickPolicy', tp, RTC_TICK_POLICIES);
  }
  const pit = readObj(timer.pit, 'spec.domain.clock.timer.pit', c);
  if (pit) {
    if (readBool(pit.present, 'spec.domain.clock.timer.pit.present', c) === false)
      c.value('spec.domain.clock.timer.pit.present', false, 'the PIT cannot be removed');
    const tp = readStr(pit.tickPolicy, 'spec.domain.clock.timer.pit.tickPolicy', c);
    if (tp !== undefined) {
      if (!PIT_TICK_POLICIES.includes(tp)) c.value('spec.domain.clock.timer.pit.tickPolicy', tp, PIT_TICK_POLICIES);
      // Only KVM's in-kernel PIT has a lost-tick policy; TCG's PIT just delays.
      else if (ctx.input.accel === 'kvm') timers.push('-global', `kvm-pit.lost_tick_policy=${tp}`);
      else if (tp === 'discard') ctx.warnings.push('spec.domain.clock.timer.pit.tickPolicy: discard has no effect under TCG');
    }
  }
  ctx.args.clock.push('-rtc', opt(rtc[0].join('='), rtc.slice(1)), ...timers);
};

/** The video device; no window either way (the console is VNC, added by the process layer). */
export const video: Configurator = (ctx) => {
  const { c, devices } = ctx;
  ctx.args.display.push('-display', 'none');
  const auto = readBool(devices.autoattachGraphicsDevice, 'spec.domain.devices.autoattachGraphicsDevice', c) !== false;
  const spec = readObj(devices.video, 'spec.domain.devices.video', c);
  const type = readStr(spec?.type, 'spec.domain.devices.video.type', c);
  if (!auto) {
    if (spec) c.invalid('spec.domain.devices.video', spec, 'needs autoattachGraphicsDevice (it is false)');
    return;
  }
  const models: Record<string, string> = { vga: 'VGA', virtio: 'virtio-vga', bochs: 'bochs-display', cirrus: 'cirrus-vga' };
  const model = models[type ?? 'vga'];
  if (!model) return c.value('spec.domain.devices.video.type', type, Object.keys(models));
  ctx.args.devices.push('-device', opt(model, [['id', 'video0']]));
};

/** ttyS0 on the serial0 chardev, unless autoattachSerialConsole is false. */
export const serialConsole: Configurator = (ctx) => {
  const { c, devices } = ctx;
  ctx.serialConsole = readBool(devices.autoattachSerialConsole, 'spec.domain.devices.autoattachSerialConsole', c) !== false;
  if (ctx.serialConsole) {
    ctx.args.devices.push(
      '-device',
      opt('isa-serial', [
        ['chardev', SERIAL_CHARDEV_ID],
        ['id', 'serial0'],
      ]),
    );
    ctx.chardevs.push({ id: SERIAL_CHARDEV_ID, role: 'serial-console' });
  }
  if (readBool(devices.logSerialConsole, 'spec.domain.devices.logSerialConsole', c) === false) {
    ctx.warnings.push('spec.domain.devices.logSerialConsole: false has no effect: Vessel always keeps serial.log');
  }
};

/** The guest agent channel is always there, as in KubeVirt. */
export const guestAgent: Configurator = (ctx) => {
  ctx.args.devices.push('-device', opt(virtio(ctx, 'virtio-serial-pci'), [['id', 'virtio-serial0']]));
  ctx.args.devices.push(
    '-device',
    opt('virtserialport', [
      ['bus', 'virtio-serial0.0'],
      ['chardev', GUEST_AGENT_CHARDEV_ID],
      ['name', 'org.qemu.guest_agent.0'],
    ]),
  );
  ctx.chardevs.push({ id: GUEST_AGENT_CHARDEV_ID, role: 'guest-agent' });
};

export const balloon: Configurator = (ctx) => {
  if (readBool(ctx.devices.autoattachMemBalloon, 'spec.domain.devices.autoattachMemBalloon', ctx.c) === false) return;
  // Free page reporting returns freed guest memory to the host; not with hugepages (KubeVirt's rule).
  ctx.args.devices.push(
    '-device',
    opt(virtio(ctx, 'virtio-balloon-pci'), [
      ['id', 'balloon0'],
      ['free-page-reporting', ctx.hugepages ? undefined : true],
    ]),
  );
};

export const rng: Configurator = (ctx) => {
  if (!isSet(ctx.devices.rng)) return;
  ctx.args.devices.push(
    '-object',
    opt('rng-random', [
      ['id', 'objrng0'],
      ['filename', '/dev/urandom'],
    ]),
  );
  ctx.args.devices.push(
    '-device',
    opt(virtio(ctx, 'virtio-rng-pci'), [
      ['rng', 'objrng0'],
      ['id', 'rng0'],
    ]),
  );
};

/** The i6300esb device, and its action as -action (in the actions section, before the devices). */
export const watchdog: Configurator = (ctx) => {
  const { c } = ctx;
  const w = readObj(ctx.devices.watchdog, 'spec.domain.devices.watchdog', c);
  if (!w) return;
  const wname = checkName(c, readStr(w.name, 'spec.domain.devices.watchdog.name', c), 'spec.domain.devices.watchdog.name', 'the watchdog name', false);
  if (wname === undefined) return;
  claimId(ctx, deviceId(wname), 'spec.domain.devices.watchdog.name', wname);
  const esb = readObj(w.i6300esb, 'spec.domain.devices.watchdog.i6300esb', c);
  if (!esb) {
    if (!isSet(w.diag288)) c.required('spec.domain.devices.watchdog.i6300esb', 'a watchdog model (i6300esb)');
    return;
  }
  const action = readStr(esb.action, 'spec.domain.devices.watchdog.i6300esb.action', c) ?? 'reset';
  if (!['poweroff', 'reset', 'shutdown'].includes(action))
    return c.value('spec.domain.devices.watchdog.i6300esb.action', action, ['poweroff', 'reset', 'shutdown']);
  // KubeVirt's actions are QEMU's: poweroff (hard), reset, shutdown (ACPI request).
  ctx.args.devices.push('-device', opt('i6300esb', [['id', deviceId(wname)]]));
  ctx.args.actions.push('-action', `watchdog=${action}`);
};

/** Tablets and keyboards on USB (one xHCI controller for all) or virtio. */
export const inputs: Configurator = (ctx) => {
  const { c, devices } = ctx;
  let list = readList(devices.inputs, 'spec.domain.devices.inputs', c);
  if (list.length === 0 && readBool(devices.autoattachInputDevice, 'spec.domain.devices.autoattachInputDevice', c) === true) {
    list = [{ name: 'default-0', type: 'tablet', bus: 'usb' }];
  }
  let usb = false;
  list.forEach((inp, i) => {
    const path = `spec.domain.devices.inputs[${i}]`;
    const o = readObj(inp, path, c);
    if (!o) return;
    const rawName = readStr(o.name, `${path}.name`, c);
    const type = readStr(o.type, `${path}.type`, c) ?? 'tablet';
    const bus = readStr(o.bus, `${path}.bus`, c) ?? 'usb';
    const iname = checkName(c, rawName, `${path}.name`, 'the input device name', false);
    if (iname === undefined) return;
    claimId(ctx, deviceId(iname), `${path}.name`, iname);
    if (type !== 'tablet' && type !== 'keyboard') return c.value(`${path}.type`, type, ['tablet', 'keyboard']);
    if (bus === 'usb') {
      if (!usb) ctx.args.devices.push('-device', opt('qemu-xhci', [['id', 'usb']]));
      usb = true;
      ctx.args.devices.push(
        '-device',
        opt(type === 'tablet' ? 'usb-tablet' : 'usb-kbd', [
          ['id', deviceId(iname)],
          ['bus', 'usb.0'],
        ]),
      );
    } else if (bus === 'virtio') {
      ctx.args.devices.push('-device', opt(type === 'tablet' ? 'virtio-tablet-pci' : 'virtio-keyboard-pci', [['id', deviceId(iname)]]));
    } else {
      c.value(`${path}.bus`, bus, ['usb', 'virtio']);
    }
  });
};

/** sgabios for bios.useSerial: BIOS output on the serial console. */
export const sgabios: Configurator = (ctx) => {
  const { c } = ctx;
  const bl = readObj(ctx.firmware.bootloader, 'spec.domain.firmware.bootloader', c);
  const bios = readObj(bl?.bios, 'spec.domain.firmware.bootloader.bios', c);
  if (readBool(bios?.useSerial, 'spec.domain.firmware.bootloader.bios.useSerial', c) !== true) return;
  if (!ctx.serialConsole)
    c.invalid('spec.domain.firmware.bootloader.bios.useSerial', true, 'needs the serial console (autoattachSerialConsole must not be false)');
  ctx.args.devices.push('-device', 'sga');
};
