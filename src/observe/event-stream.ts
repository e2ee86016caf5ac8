/**
 * Reading a server-sent event stream (what the debug page's EventSource reads), for the benchmark
 * and the tests: each event's name and its data line, parsed as JSON. Ends when the stream ends
 * or is aborted.
 */
export interface ServerSentEvent {
  readonly event: string;
  readonly data: unknown;
}

export async function* serverSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (data !== undefined) yield { event: /^event: (\S+)/m.exec(block)?.[1] ?? 'message', data: JSON.parse(data) };
      }
    }
  } catch (error) {
    if ((error as Error).name !== 'AbortError') throw error;
  } finally {
    reader.releaseLock();
  }
}
