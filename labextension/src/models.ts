/**
 * The REST API's JSON shapes, mirroring decloud_magics/server/models.py.
 *
 * Money is a decimal string in the network's coin: JSON numbers become
 * doubles in the browser, and wei amounts outgrow them.
 */
export namespace Decloud {
  export type Status =
    | 'created'
    | 'open'
    | 'claimed'
    | 'running'
    | 'completed'
    | 'not_processed'
    | 'failed'
    | 'cancelled'
    | 'disputed';

  export interface IRun {
    id: string;
    name: string | null;
    network: string | null;
    unit: string;
    status: Status;
    final: boolean;
    task_id: number | null;
    submitted_at: string;
    started_at: string | null;
    completed_at: string | null;
    duration_s: number | null;
    price: string;
    gas_used: number | null;
    gas_cost: string;
    total_cost: string;
    refunded: string | null;
    worker: string | null;
    input_cid: string | null;
    result_cid: string | null;
    error: string | null;
  }

  export interface IEvent {
    kind: string;
    at: string;
    block: number | null;
    tx_hash: string | null;
    gas_used: number | null;
    price: string;
    worker: string | null;
    message: string;
  }

  export interface IRunList {
    runs: IRun[];
    total: number;
  }

  export interface IRunDetail {
    run: IRun;
    events: IEvent[];
  }

  export interface ISpending {
    network: string | null;
    unit: string;
    hour: string;
    today: string;
    total: string;
  }

  export interface ISummary {
    runs: number;
    in_flight: number;
    statuses: Record<Status, number>;
    mean_duration_s: number | null;
    spending: ISpending[];
    as_of: string;
  }

  export interface IRunsQuery {
    network?: string;
    status?: Status[];
    limit?: number;
  }
}
