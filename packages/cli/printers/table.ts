/**
 * kubectl-style tables: server-side meta.k8s.io/v1 Tables turned into aligned text columns
 * (kubectl's tabwriter settings: min width 6, padding 3, widths remembered across writes so
 * `get -w` rows line up with the first table), plus kubectl's human-readable ages.
 */
import { isTable, type KubeObject, type Table, type TableColumnDefinition, type TableRow } from '@vessel/client';

/** kubectl's duration.HumanDuration: 45s, 3m20s, 15m, 5h2m, 20h, 3d4h, 40d, 2y30d. */
export function humanDuration(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  if (seconds < -1) return '<invalid>';
  if (seconds < 0) return '0s';
  if (seconds < 120) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 10) return seconds % 60 === 0 ? `${minutes}m` : `${minutes}m${seconds % 60}s`;
  if (minutes < 180) return `${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 8) return minutes % 60 === 0 ? `${hours}h` : `${hours}h${minutes % 60}m`;
  if (hours < 48) return `${hours}h`;
  if (hours < 24 * 8) return hours % 24 === 0 ? `${Math.floor(hours / 24)}d` : `${Math.floor(hours / 24)}d${hours % 24}h`;
  if (hours < 24 * 365 * 2) return `${Math.floor(hours / 24)}d`;
  const days = Math.floor(hours / 24);
  if (hours < 24 * 365 * 8) return days % 365 === 0 ? `${Math.floor(days / 365)}y` : `${Math.floor(days / 365)}y${days % 365}d`;
  return `${Math.floor(days / 365)}y`;
}

/** Time since an RFC 3339 timestamp, or '<unknown>' (as kubectl prints a missing one). */
export function age(timestamp: string | undefined, now = Date.now()): string {
  const t = timestamp ? Date.parse(timestamp) : NaN;
  return Number.isNaN(t) ? '<unknown>' : humanDuration(now - t);
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

/**
 * One cell as text. Nothing for null (kubectl prints nothing); multi-line strings cut at the
 * first newline. A raw timestamp in a 'date' column becomes an age (servers normally send the
 * age already; this covers ones that do not).
 */
export function formatCell(value: unknown, column?: TableColumnDefinition, now = Date.now()): string {
  if (value === null || value === undefined) return '';
  if (typeof value === 'string') {
    if (column?.type === 'date' && ISO_TIME.test(value)) return age(value, now);
    const newline = value.indexOf('\n');
    return newline >= 0 ? `${value.slice(0, newline)}...` : value;
  }
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return JSON.stringify(value);
}

export interface TableOptions {
  /** Show priority > 0 columns (-o wide). */
  wide?: boolean;
  /** Prepend a NAMESPACE column (-A). */
  withNamespace?: boolean;
  /** Prefix names with `kind.group/` (when several types are printed together). */
  kindPrefix?: string;
  now?: number;
}

/** The visible header and rows of a Table, as text cells. */
export function tableCells(table: Table, opts: TableOptions = {}): { header: string[]; rows: string[][] } {
  const visible = table.columnDefinitions.map((column, index) => ({ column, index })).filter(({ column }) => opts.wide || !column.priority);
  const nameIndex = table.columnDefinitions.findIndex((c) => c.format === 'name' || c.name.toLowerCase() === 'name');
  const header = visible.map(({ column }) => column.name.toUpperCase());
  if (opts.withNamespace) header.unshift('NAMESPACE');
  const rows = table.rows.map((row) => {
    const cells = visible.map(({ column, index }) => {
      const text = formatCell(row.cells[index], column, opts.now);
      return index === nameIndex && opts.kindPrefix ? `${opts.kindPrefix}/${text}` : text;
    });
    if (opts.withNamespace) cells.unshift(row.object?.metadata?.namespace ?? '');
    return cells;
  });
  return { header, rows };
}

/**
 * Aligns rows like Go's tabwriter as kubectl configures it: each column but the last is as
 * wide as its widest cell plus 3 spaces, at least 6. Widths only grow, so rows written later
 * (watch events) stay aligned with earlier ones.
 */
export class TableWriter {
  private widths: number[] = [];
  constructor(
    private readonly write: (text: string) => void,
    private readonly minWidth = 6,
    private readonly padding = 3,
  ) {}

  writeRows(rows: string[][]): void {
    for (const row of rows) {
      row.slice(0, -1).forEach((cell, i) => {
        this.widths[i] = Math.max(this.widths[i] ?? 0, this.minWidth, textWidth(cell) + this.padding);
      });
    }
    const lines = rows.map((row) =>
      row
        .map((cell, i) => (i < row.length - 1 ? cell + ' '.repeat(this.widths[i] - textWidth(cell)) : cell))
        .join('')
        .trimEnd(),
    );
    if (lines.length > 0) this.write(lines.join('\n') + '\n');
  }
}

/** Renders rows in one go (see TableWriter). */
export function renderRows(rows: string[][]): string {
  let out = '';
  new TableWriter((text) => (out += text)).writeRows(rows);
  return out;
}

/** Renders a whole Table: header (unless empty or noHeaders) and rows. */
export function renderTable(table: Table, opts: TableOptions & { noHeaders?: boolean } = {}): string {
  const { header, rows } = tableCells(table, opts);
  if (rows.length === 0) return '';
  return renderRows(opts.noHeaders ? rows : [header, ...rows]);
}

/** A NAME/AGE Table for objects, for servers (or answers) that are not Tables. */
export function objectsTable(objects: KubeObject[], now = Date.now()): Table {
  const rows: TableRow[] = objects.map((obj) => ({
    cells: [obj.metadata?.name ?? '', age(obj.metadata?.creationTimestamp, now)],
    object: { metadata: obj.metadata },
  }));
  return {
    kind: 'Table',
    columnDefinitions: [
      { name: 'Name', type: 'string', format: 'name', priority: 0 },
      { name: 'Age', type: 'string', priority: 0 },
    ],
    rows,
  };
}

/** The answer as a Table: itself, or (a list or a single object) converted by objectsTable. */
export function asTable(answer: unknown): Table {
  if (isTable(answer)) return answer;
  const maybeList = answer as { items?: KubeObject[] } | undefined;
  if (maybeList && Array.isArray(maybeList.items)) return { ...objectsTable(maybeList.items), metadata: (answer as { metadata?: Table['metadata'] }).metadata };
  return objectsTable(answer ? [answer as KubeObject] : []);
}

function textWidth(text: string): number {
  return [...text].length;
}
