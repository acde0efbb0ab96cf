import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { Decloud } from './models';

/**
 * An answer from the decloud REST API that was not a success, with the
 * server's one-sentence message.
 */
export class DecloudAPIError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
    this.name = 'DecloudAPIError';
  }
}

/**
 * Call `/decloud/<endPoint>` on the Jupyter server and parse its JSON.
 */
export async function requestAPI<T>(
  endPoint: string,
  init: RequestInit = {},
  params?: URLSearchParams
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const search = params && params.toString();
  const url = URLExt.join(settings.baseUrl, 'decloud', endPoint) + (search ? `?${search}` : '');
  let response: Response;
  try {
    // An explicit cache mode keeps ServerConnection from appending its
    // cache-busting timestamp; the panel always wants fresh answers.
    response = await ServerConnection.makeRequest(url, { cache: 'no-store', ...init }, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let body: unknown = undefined;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
  }
  if (!response.ok) {
    const message =
      (body as { message?: string } | undefined)?.message ||
      `The decloud server extension answered ${response.status} ${response.statusText}.`;
    throw new DecloudAPIError(response.status, message);
  }
  return body as T;
}

/**
 * The one client of the decloud REST API.
 */
export class DecloudService {
  /** The newest runs first, optionally filtered. */
  listRuns(query: Decloud.IRunsQuery = {}): Promise<Decloud.IRunList> {
    const params = new URLSearchParams();
    if (query.network) {
      params.set('network', query.network);
    }
    if (query.status && query.status.length) {
      params.set('status', query.status.join(','));
    }
    if (query.limit !== undefined) {
      params.set('limit', String(query.limit));
    }
    return requestAPI<Decloud.IRunList>('runs', {}, params);
  }

  /** One run and its events. */
  getRun(runId: string): Promise<Decloud.IRunDetail> {
    return requestAPI<Decloud.IRunDetail>(`runs/${encodeURIComponent(runId)}`);
  }

  /** Counts by status and spending per network. */
  getSummary(): Promise<Decloud.ISummary> {
    return requestAPI<Decloud.ISummary>('summary');
  }
}
