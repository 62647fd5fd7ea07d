import recspark.models.sasrec as S
def _last_state(self, inputs, training=False):
    history = inputs[C.HISTORY]
    types = tf.clip_by_value(inputs[C.HISTORY_TYPES], 0, self.spec.num_event_types - 1)
    gaps = tf.clip_by_value(inputs[C.HISTORY_GAPS], 0, self.spec.num_gap_buckets)
    real = tf.not_equal(history, C.PAD_IDX)
    step_mask = tf.cast(real, tf.float32)[:, :, None]
    length = history.shape[1]
    positions = tf.range(self.spec.max_seq_len - length, self.spec.max_seq_len)
    x = (self.item_embedding(history) + self.type_embedding(types) + self.gap_embedding(gaps)
         + self.position_embedding(positions)[None, :, :])
    x = self.input_dropout(x, training=training) * step_mask
    causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
    attention_mask = tf.logical_and(causal[None, :, :], real[:, None, :])
    for block in self.blocks[:-1]:
        x = block(x, attention_mask=attention_mask, step_mask=step_mask, training=training)
    b = self.blocks[-1]
    normed = b.attention_norm(x)
    q = normed[:, -1:, :]
    att = b.attention(query=q, value=normed, key=normed, attention_mask=attention_mask[:, -1:, :], training=training)
    y = x[:, -1:, :] + b.attention_dropout(att, training=training)
    hidden = b.ffn_out(b.ffn_dropout(b.ffn_in(b.ffn_norm(y)), training=training))
    y = (y + b.ffn_dropout(hidden, training=training)) * step_mask[:, -1:, :]
    return self.final_norm(y)[:, -1, :]
def _uv(self, inputs, training=False):
    steps = min(self.ENCODER_STEPS, self.spec.max_seq_len)
    latest = {name: inputs[name][:, -steps:] for name in S.SASRec.INPUTS}
    return _last_state(self, latest, training=training)
R.RepeatNet.user_vectors = _uv
