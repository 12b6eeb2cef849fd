import https from 'node:https';

export interface ApiAnswer {
  status: number;
  json: any;
}

/** The backend's HTTPS API as the factory, an operator or a device reaches it: trusting only our root. */
export class FleetApi {
  private readonly agent: https.Agent;
  constructor(
    readonly baseUrl: string,
    readonly rootPem: string,
    private readonly operatorToken: string | undefined,
  ) {
    this.agent = new https.Agent({ keepAlive: true, maxSockets: 8, ca: rootPem });
  }

  /** An operator call (bulk registration, device status). */
  operator(method: string, pathname: string, body?: unknown): Promise<ApiAnswer> {
    const headers: Record<string, string> = {};
    if (this.operatorToken) headers.authorization = `Bearer ${this.operatorToken}`;
    return this.send(method, pathname, { headers, body, agent: this.agent });
  }

  /** A call with no credentials but what the body carries (enrollment tokens). */
  anonymous(method: string, pathname: string, body?: unknown): Promise<ApiAnswer> {
    return this.send(method, pathname, { headers: {}, body, agent: this.agent });
  }

  /** A device's own call over mutual TLS; no shared agent, since each device has its own certificate. */
  asDevice(method: string, pathname: string, tls: { cert: string; key: string }, body?: unknown): Promise<ApiAnswer> {
    return this.send(method, pathname, { headers: {}, body, tls });
  }

  private send(
    method: string,
    pathname: string,
    o: { headers: Record<string, string>; body?: unknown; agent?: https.Agent; tls?: { cert: string; key: string } },
  ): Promise<ApiAnswer> {
    const headers = { ...o.headers };
    let payload: string | undefined;
    if (o.body !== undefined) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(o.body);
    }
    return new Promise((resolve, reject) => {
      const req = https.request(
        this.baseUrl + pathname,
        { method, headers, agent: o.agent ?? false, ca: this.rootPem, cert: o.tls?.cert, key: o.tls?.key, timeout: 60_000 },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let json: any;
            try {
              json = JSON.parse(text);
            } catch {
              json = { text };
            }
            resolve({ status: res.statusCode ?? 0, json });
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`${method} ${pathname} timed out`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}
