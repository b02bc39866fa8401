/**
 * Standard 5-field cron expressions (minute hour day-of-month month day-of-week), as CDI's
 * DataImportCron takes them (robfig/cron's ParseStandard): `*`, ranges `a-b`, steps `x/n`,
 * lists `a,b`, month and day names (JAN, MON), 7 = Sunday, and the descriptors `@yearly`,
 * `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. Times are UTC.
 * Pure: the API validates schedules with it, the DataImportCron controller computes ticks.
 */

export interface CronSchedule {
  minutes: ReadonlySet<number>;
  hours: ReadonlySet<number>;
  days: ReadonlySet<number>;
  months: ReadonlySet<number>;
  weekdays: ReadonlySet<number>;
  /** Both day fields restricted: a day matches when either does (Vixie cron's rule). */
  dayOr: boolean;
}

interface Field {
  name: string;
  min: number;
  max: number;
  names?: readonly string[];
}

const FIELDS: readonly Field[] = [
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12, names: ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'] },
  { name: 'day of week', min: 0, max: 7, names: ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'] },
];

const DESCRIPTORS: Record<string, string> = {
  '@yearly': '0 0 1 1 *',
  '@annually': '0 0 1 1 *',
  '@monthly': '0 0 1 * *',
  '@weekly': '0 0 * * 0',
  '@daily': '0 0 * * *',
  '@midnight': '0 0 * * *',
  '@hourly': '0 * * * *',
};

/** Why `expr` is not a valid schedule, or undefined when it is. */
export function cronProblem(expr: string): string | undefined {
  try {
    parseCron(expr);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

/** Parses a schedule; throws an Error saying which field is wrong and why. */
export function parseCron(expr: string): CronSchedule {
  const text = String(expr).trim();
  const expanded = text.startsWith('@') ? DESCRIPTORS[text.toLowerCase()] : text;
  if (expanded === undefined) throw new Error(`unknown descriptor "${text}": use one of ${Object.keys(DESCRIPTORS).join(', ')}`);
  const parts = expanded.split(/\s+/).filter((p) => p !== '');
  if (parts.length !== 5) throw new Error(`a schedule has 5 fields (minute hour day-of-month month day-of-week), not ${parts.length}`);
  const sets = parts.map((p, i) => parseField(p, FIELDS[i]));
  const weekdays = new Set([...sets[4]].map((d) => d % 7));
  return {
    minutes: sets[0],
    hours: sets[1],
    days: sets[2],
    months: sets[3],
    weekdays,
    dayOr: !isStar(parts[2]) && !isStar(parts[4]),
  };
}

/** An unrestricted field (robfig/cron: `*` or `?` without a step). */
const isStar = (p: string) => p === '*' || p === '?';

function parseField(text: string, f: Field): Set<number> {
  const out = new Set<number>();
  for (const item of text.split(',')) {
    const bad = (why: string) => new Error(`${f.name} "${item}" ${why}`);
    const [range, stepText, extra] = item.split('/');
    if (extra !== undefined) throw bad('has more than one /');
    let lo: number;
    let hi: number;
    if (range === '*' || range === '?') {
      lo = f.min;
      hi = f.max;
    } else {
      const [a, b, more] = range.split('-');
      if (more !== undefined) throw bad('is not a value or a range a-b');
      lo = value(a, f, bad);
      hi = b === undefined ? (stepText !== undefined ? f.max : lo) : value(b, f, bad);
      if (hi < lo) throw bad(`is a range whose end ${hi} is before its start ${lo}`);
    }
    let step = 1;
    if (stepText !== undefined) {
      if (!/^\d+$/.test(stepText) || Number(stepText) < 1) throw bad('has a step that is not a positive whole number');
      step = Number(stepText);
    }
    for (let v = lo; v <= hi; v += step) out.add(v);
  }
  return out;
}

function value(text: string, f: Field, bad: (why: string) => Error): number {
  const named = f.names?.indexOf(text.toUpperCase()) ?? -1;
  const n = named >= 0 ? named + (f.name === 'month' ? 1 : 0) : /^\d+$/.test(text) ? Number(text) : NaN;
  if (Number.isNaN(n)) throw bad(`is not a number${f.names ? ' or a name' : ''}`);
  if (n < f.min || n > f.max) throw bad(`is out of range ${f.min}-${f.max}`);
  return n;
}

function dayMatches(s: CronSchedule, d: Date): boolean {
  const dom = s.days.has(d.getUTCDate());
  const dow = s.weekdays.has(d.getUTCDay());
  return s.dayOr ? dom || dow : dom && dow;
}

/** The first minute strictly after `after` that the schedule matches (UTC); undefined if none within 5 years (e.g. 30 FEB). */
export function nextTick(s: CronSchedule, after: Date): Date | undefined {
  const t = new Date(after.getTime());
  t.setUTCSeconds(0, 0);
  t.setUTCMinutes(t.getUTCMinutes() + 1);
  const limit = after.getTime() + 5 * 366 * 24 * 3600_000;
  while (t.getTime() <= limit) {
    if (!s.months.has(t.getUTCMonth() + 1)) {
      t.setUTCMonth(t.getUTCMonth() + 1, 1);
      t.setUTCHours(0, 0);
      continue;
    }
    if (!dayMatches(s, t)) {
      t.setUTCDate(t.getUTCDate() + 1);
      t.setUTCHours(0, 0);
      continue;
    }
    if (!s.hours.has(t.getUTCHours())) {
      t.setUTCHours(t.getUTCHours() + 1, 0);
      continue;
    }
    if (!s.minutes.has(t.getUTCMinutes())) {
      t.setUTCMinutes(t.getUTCMinutes() + 1);
      continue;
    }
    return t;
  }
  return undefined;
}
