import { Message } from '@lumino/messaging';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { formatAmount, formatDuration, formatTime, label, runTime, shortAddress } from './format';
import { Decloud } from './models';
import { DecloudAPIError, DecloudService } from './service';

/** How many of the newest runs the panel lists. */
const RUN_LIMIT = 100;

/** Poll every two seconds while visible; back off up to a minute while the server fails. */
const POLL_INTERVAL_MS = 2000;
const POLL_MAX_MS = 60 * 1000;

/**
 * The summary scans the whole ledger, so it is fetched when the list changed
 * and otherwise at most this often (for writes to runs older than the list).
 */
const SUMMARY_MAX_AGE_MS = 30 * 1000;

type Child = Node | string | null | undefined | false;

/** A DOM element with classes and children; text goes through text nodes, never HTML. */
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  if (className) {
    element.className = className;
  }
  for (const child of children) {
    if (child) {
      element.append(child);
    }
  }
  return element;
}

/**
 * The left-area panel listing the ledger's runs, newest first.
 *
 * Kept current by a `Poll` that stands by while the panel or the browser tab
 * is hidden; clicking a run shows its events, refreshed on the same poll.
 */
export class RunsPanel extends Widget {
  constructor(options: RunsPanel.IOptions) {
    super();
    this._service = options.service;
    this.addClass('decloud-RunsPanel');

    this._summaryNode = h('span', 'decloud-RunsPanel-summary');
    const header = h(
      'header',
      'decloud-RunsPanel-header',
      h('h2', 'decloud-RunsPanel-title', 'decloud runs'),
      this._summaryNode
    );
    this._messageNode = h('div', 'decloud-RunsPanel-message');
    this._listNode = h('ul', 'decloud-RunList');
    this._listNode.setAttribute('aria-label', 'decloud runs');
    this._detailNode = h('section', 'decloud-RunDetail');
    this._detailNode.hidden = true;
    this.node.append(header, this._messageNode, this._listNode, this._detailNode);

    this._poll = new Poll<void, Error>({
      factory: () => this._refresh(),
      frequency: { interval: POLL_INTERVAL_MS, backoff: true, max: POLL_MAX_MS },
      name: 'decloud-magics:runs',
      standby: () => (this.isVisible ? 'when-hidden' : true)
    });
  }

  /** The run whose events are shown, if any. */
  get selectedRunId(): string | null {
    return this._selected;
  }

  /** Fetch now rather than on the next tick. */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  /** Show one run's events (or hide them with null). */
  async select(runId: string | null): Promise<void> {
    this._selected = runId;
    this._detail = null;
    this._render();
    if (runId !== null) {
      await this._loadDetail(runId);
      this._render();
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this._poll.refresh();
  }

  private async _refresh(): Promise<void> {
    try {
      const list = await this._service.listRuns({ limit: RUN_LIMIT });
      const listKey = JSON.stringify(list);
      const summaryAge = Date.now() - this._summaryAt;
      if (listKey !== this._listKey || !this._summary || summaryAge > SUMMARY_MAX_AGE_MS) {
        this._summary = await this._service.getSummary();
        this._summaryAt = Date.now();
      }
      this._list = list;
      this._listKey = listKey;
      this._error = null;
      if (this._selected !== null) {
        await this._loadDetail(this._selected);
      }
    } catch (error) {
      this._error = RunsPanel.describe(error);
      this._render();
      throw error; // the poll backs off while the server keeps failing
    }
    this._render();
  }

  private async _loadDetail(runId: string): Promise<void> {
    try {
      const detail = await this._service.getRun(runId);
      if (this._selected === runId) {
        this._detail = detail;
      }
    } catch (error) {
      if (error instanceof DecloudAPIError && error.status === 404 && this._selected === runId) {
        this._selected = null; // the run left the ledger (a moved-aside file)
        this._detail = null;
        return;
      }
      throw error;
    }
  }

  private _render(): void {
    this._renderSummary();
    this._renderMessage();
    this._renderList();
    this._renderDetail();
  }

  private _renderSummary(): void {
    const summary = this._summary;
    if (!summary) {
      this._summaryNode.textContent = '';
      return;
    }
    const parts = [`${summary.runs} ${summary.runs === 1 ? 'run' : 'runs'}`];
    if (summary.in_flight) {
      parts.push(`${summary.in_flight} in flight`);
    }
    for (const spent of summary.spending) {
      if (spent.today !== '0') {
        parts.push(`${formatAmount(spent.today, spent.unit)} today on ${spent.network ?? '?'}`);
      }
    }
    this._summaryNode.textContent = parts.join(' · ');
  }

  private _renderMessage(): void {
    const node = this._messageNode;
    node.replaceChildren();
    node.classList.toggle('decloud-mod-error', this._error !== null);
    if (this._error !== null) {
      node.append(this._error);
    } else if (this._list && this._list.runs.length === 0) {
      node.append(
        h(
          'p',
          'decloud-RunsPanel-empty',
          'No runs yet. In a notebook, run ',
          h('code', '', '%load_ext decloud_magics'),
          ', then start a cell with ',
          h('code', '', '%%decloud run'),
          '.'
        )
      );
    } else if (this._list && this._list.total > this._list.runs.length) {
      node.append(`The newest ${this._list.runs.length} of ${this._list.total} runs.`);
    }
  }

  private _renderList(): void {
    const runs = this._list ? this._list.runs : [];
    const now = Date.now();
    this._listNode.replaceChildren(...runs.map(run => this._runItem(run, now)));
  }

  private _runItem(run: Decloud.IRun, now: number): HTMLLIElement {
    const cost = formatAmount(run.total_cost, run.unit);
    const costNode = h('span', 'decloud-RunItem-cost', cost);
    costNode.title = `price ${formatAmount(run.price, run.unit)} + gas ${formatAmount(run.gas_cost, run.unit)}`;
    const workerNode = h('span', 'decloud-RunItem-worker', shortAddress(run.worker));
    if (run.worker) {
      workerNode.title = run.worker;
    }
    const item = h(
      'li',
      'decloud-RunItem',
      statusBadge(run.status),
      h('span', 'decloud-RunItem-name', run.name || run.id),
      h('span', 'decloud-RunItem-time', runTime(run, now)),
      costNode,
      workerNode
    );
    item.dataset.runId = run.id;
    item.dataset.status = run.status;
    item.title = `run ${run.id} on ${run.network ?? '?'}`;
    item.tabIndex = 0;
    item.setAttribute('role', 'button');
    item.setAttribute('aria-pressed', String(run.id === this._selected));
    item.classList.toggle('decloud-mod-selected', run.id === this._selected);
    const toggle = () => void this.select(run.id === this._selected ? null : run.id);
    item.addEventListener('click', toggle);
    item.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        toggle();
      }
    });
    return item;
  }

  private _renderDetail(): void {
    const node = this._detailNode;
    const detail = this._detail;
    node.hidden = this._selected === null;
    if (this._selected === null) {
      node.replaceChildren();
      return;
    }
    if (!detail) {
      node.replaceChildren(h('p', 'decloud-RunDetail-loading', 'Loading the run’s events…'));
      return;
    }
    const run = detail.run;
    const close = h('button', 'decloud-RunDetail-close jp-Button', '×');
    close.title = 'Hide the events';
    close.setAttribute('aria-label', 'Hide the events');
    close.addEventListener('click', () => void this.select(null));

    const figures = h('dl', 'decloud-RunDetail-figures');
    const add = (name: string, value: string | null | undefined) => {
      if (value) {
        figures.append(h('dt', '', name), h('dd', '', value));
      }
    };
    add('id', run.id);
    add('network', run.network);
    add('task', run.task_id === null ? null : String(run.task_id));
    add('price', formatAmount(run.price, run.unit));
    add('gas', `${run.gas_used ?? 0} (${formatAmount(run.gas_cost, run.unit)})`);
    add('total', formatAmount(run.total_cost, run.unit));
    add('refunded', run.refunded === null ? null : formatAmount(run.refunded, run.unit));
    add('duration', run.duration_s === null ? null : formatDuration(run.duration_s));
    add('worker', run.worker);
    add('input', run.input_cid);
    add('result', run.result_cid);
    add('error', run.error);

    const events = h('ol', 'decloud-EventList');
    events.setAttribute('aria-label', 'events');
    for (const event of detail.events) {
      const item = h(
        'li',
        'decloud-EventItem',
        h('span', 'decloud-EventItem-at', formatTime(event.at)),
        h('span', 'decloud-EventItem-kind', label(event.kind)),
        h('span', 'decloud-EventItem-message', event.message),
        event.block !== null && h('span', 'decloud-EventItem-block', `block ${event.block}`)
      );
      item.dataset.kind = event.kind;
      if (event.tx_hash) {
        item.title = `transaction ${event.tx_hash}`;
      }
      events.append(item);
    }
    node.replaceChildren(
      h(
        'header',
        'decloud-RunDetail-header',
        statusBadge(run.status),
        h('h3', 'decloud-RunDetail-title', run.name || run.id),
        close
      ),
      figures,
      h('h4', 'decloud-RunDetail-subtitle', 'Events'),
      detail.events.length ? events : h('p', 'decloud-RunDetail-none', 'No events recorded yet.')
    );
  }

  private _service: DecloudService;
  private _poll: Poll<void, Error>;
  private _list: Decloud.IRunList | null = null;
  private _listKey = '';
  private _summary: Decloud.ISummary | null = null;
  private _summaryAt = 0;
  private _selected: string | null = null;
  private _detail: Decloud.IRunDetail | null = null;
  private _error: string | null = null;
  private _summaryNode: HTMLElement;
  private _messageNode: HTMLElement;
  private _listNode: HTMLElement;
  private _detailNode: HTMLElement;
}

function statusBadge(status: Decloud.Status): HTMLElement {
  const badge = h('span', `decloud-StatusBadge decloud-status-${status}`, label(status));
  badge.dataset.status = status;
  return badge;
}

export namespace RunsPanel {
  export interface IOptions {
    service: DecloudService;
  }

  /** One sentence for a failed refresh, pointing at the likely fix. */
  export function describe(error: unknown): string {
    if (error instanceof DecloudAPIError) {
      if (error.status === 404) {
        return (
          'The decloud server extension is not running: install decloud-magics in the ' +
          'environment that runs Jupyter, then restart JupyterLab.'
        );
      }
      return error.message;
    }
    return 'The Jupyter server cannot be reached; the list will refresh when it is back.';
  }
}
