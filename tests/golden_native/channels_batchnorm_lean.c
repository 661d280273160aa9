#include <math.h>

/* batchnorm_train */
void netdsl_kernel0(const float* restrict a_x, const float* restrict a_weight, const float* restrict a_bias, const float* restrict a_running_mean, const float* restrict a_running_var, float* restrict a_inv_std, float* restrict a_mean, float* restrict a_new_running_mean, float* restrict a_new_running_var, float* restrict a_y, const double eps, const double momentum, const long long B, const long long C, const long long N, const long long c0, const long long c1) {
    const double count = (double)(B * N);
    (void)count;
    for (long long ch = c0; ch < c1; ch++) {
        const double weight = (double)a_weight[ch];
        const double bias = (double)a_bias[ch];
        const double running_mean = (double)a_running_mean[ch];
        const double running_var = (double)a_running_var[ch];
        double total = 0;
        for (long long b = 0; b < B; b++) {
            const float* restrict row_x = a_x + (b * C + ch) * N;
            for (long long i0 = 0; i0 < N; i0 += 256) {
                const long long i1 = i0 + 256 < N ? i0 + 256 : N;
                float block_total = 0;
                #pragma omp simd reduction(+:block_total)
                for (long long i = i0; i < i1; i++) {
                    const float x = row_x[i];
                    block_total += (x);
                }
                total += block_total;
            }
        }
        const double mean = (total / count);
        double squares = 0;
        for (long long b = 0; b < B; b++) {
            const float e_mean = (float)mean;
            const float* restrict row_x = a_x + (b * C + ch) * N;
            for (long long i0 = 0; i0 < N; i0 += 256) {
                const long long i1 = i0 + 256 < N ? i0 + 256 : N;
                float block_squares = 0;
                #pragma omp simd reduction(+:block_squares)
                for (long long i = i0; i < i1; i++) {
                    const float x = row_x[i];
                    block_squares += (((x - e_mean) * (x - e_mean)));
                }
                squares += block_squares;
            }
        }
        const double var = (squares / count);
        const double istd = (1.0 / sqrt((var + eps)));
        const double gain = (istd * weight);
        a_inv_std[ch] = (float)(istd);
        a_mean[ch] = (float)(mean);
        a_new_running_mean[ch] = (float)((((1.0 - momentum) * running_mean) + (momentum * mean)));
        a_new_running_var[ch] = (float)((((1.0 - momentum) * running_var) + (((momentum * var) * count) / fmax((count - 1.0), 1.0))));
        for (long long b = 0; b < B; b++) {
            const float e_mean = (float)mean;
            const float e_gain = (float)gain;
            const float e_bias = (float)bias;
            const float* restrict row_x = a_x + (b * C + ch) * N;
            float* restrict out_y = a_y + (b * C + ch) * N;
            #pragma omp simd
            for (long long i = 0; i < N; i++) {
                const float x = row_x[i];
                out_y[i] = (((x - e_mean) * e_gain) + e_bias);
            }
        }
    }
}

/* batchnorm_eval */
void netdsl_kernel1(const float* restrict a_x, const float* restrict a_weight, const float* restrict a_bias, const float* restrict a_running_mean, const float* restrict a_running_var, float* restrict a_inv_std, float* restrict a_mean, float* restrict a_y, const double eps, const long long B, const long long C, const long long N, const long long c0, const long long c1) {
    const double count = (double)(B * N);
    (void)count;
    for (long long ch = c0; ch < c1; ch++) {
        const double weight = (double)a_weight[ch];
        const double bias = (double)a_bias[ch];
        const double running_mean = (double)a_running_mean[ch];
        const double running_var = (double)a_running_var[ch];
        const double mean = running_mean;
        const double istd = (1.0 / sqrt((running_var + eps)));
        const double gain = (istd * weight);
        a_inv_std[ch] = (float)(istd);
        a_mean[ch] = (float)(mean);
        for (long long b = 0; b < B; b++) {
            const float e_mean = (float)mean;
            const float e_gain = (float)gain;
            const float e_bias = (float)bias;
            const float* restrict row_x = a_x + (b * C + ch) * N;
            float* restrict out_y = a_y + (b * C + ch) * N;
            #pragma omp simd
            for (long long i = 0; i < N; i++) {
                const float x = row_x[i];
                out_y[i] = (((x - e_mean) * e_gain) + e_bias);
            }
        }
    }
}

/* batchnorm_backward */
void netdsl_kernel2(const float* restrict a_gy, const float* restrict a_x, const float* restrict a_weight, const float* restrict a_inv_std, const float* restrict a_mean, float* restrict a_dbias, float* restrict a_dweight, float* restrict a_dx, const long long B, const long long C, const long long N, const long long c0, const long long c1) {
    const double count = (double)(B * N);
    (void)count;
    for (long long ch = c0; ch < c1; ch++) {
        const double weight = (double)a_weight[ch];
        const double inv_std = (double)a_inv_std[ch];
        const double mean = (double)a_mean[ch];
        double sum_g = 0;
        double sum_gh = 0;
        for (long long b = 0; b < B; b++) {
            const float e_inv_std = (float)inv_std;
            const float e_mean = (float)mean;
            const float* restrict row_gy = a_gy + (b * C + ch) * N;
            const float* restrict row_x = a_x + (b * C + ch) * N;
            for (long long i0 = 0; i0 < N; i0 += 256) {
                const long long i1 = i0 + 256 < N ? i0 + 256 : N;
                float block_sum_g = 0;
                float block_sum_gh = 0;
                #pragma omp simd reduction(+:block_sum_g, block_sum_gh)
                for (long long i = i0; i < i1; i++) {
                    const float gy = row_gy[i];
                    const float x = row_x[i];
                    block_sum_g += (gy);
                    block_sum_gh += ((gy * ((x - e_mean) * e_inv_std)));
                }
                sum_g += block_sum_g;
                sum_gh += block_sum_gh;
            }
        }
        const double scale = (weight * inv_std);
        const double mean_g = (sum_g / count);
        const double mean_gh = (sum_gh / count);
        a_dbias[ch] = (float)(sum_g);
        a_dweight[ch] = (float)(sum_gh);
        for (long long b = 0; b < B; b++) {
            const float e_scale = (float)scale;
            const float e_mean_g = (float)mean_g;
            const float e_mean_gh = (float)mean_gh;
            const float e_inv_std = (float)inv_std;
            const float e_mean = (float)mean;
            const float* restrict row_gy = a_gy + (b * C + ch) * N;
            const float* restrict row_x = a_x + (b * C + ch) * N;
            float* restrict out_dx = a_dx + (b * C + ch) * N;
            #pragma omp simd
            for (long long i = 0; i < N; i++) {
                const float gy = row_gy[i];
                const float x = row_x[i];
                const float h = ((x - e_mean) * e_inv_std);
                out_dx[i] = (e_scale * ((gy - e_mean_g) - (h * e_mean_gh)));
            }
        }
    }
}

/* batchnorm_backward_fixed */
void netdsl_kernel3(const float* restrict a_gy, const float* restrict a_x, const float* restrict a_weight, const float* restrict a_inv_std, const float* restrict a_mean, float* restrict a_dbias, float* restrict a_dweight, float* restrict a_dx, const long long B, const long long C, const long long N, const long long c0, const long long c1) {
    const double count = (double)(B * N);
    (void)count;
    for (long long ch = c0; ch < c1; ch++) {
        const double weight = (double)a_weight[ch];
        const double inv_std = (double)a_inv_std[ch];
        const double mean = (double)a_mean[ch];
        double sum_g = 0;
        double sum_gh = 0;
        for (long long b = 0; b < B; b++) {
            const float e_inv_std = (float)inv_std;
            const float e_mean = (float)mean;
            const float* restrict row_gy = a_gy + (b * C + ch) * N;
            const float* restrict row_x = a_x + (b * C + ch) * N;
            for (long long i0 = 0; i0 < N; i0 += 256) {
                const long long i1 = i0 + 256 < N ? i0 + 256 : N;
                float block_sum_g = 0;
                float block_sum_gh = 0;
                #pragma omp simd reduction(+:block_sum_g, block_sum_gh)
                for (long long i = i0; i < i1; i++) {
                    const float gy = row_gy[i];
                    const float x = row_x[i];
                    block_sum_g += (gy);
                    block_sum_gh += ((gy * ((x - e_mean) * e_inv_std)));
                }
                sum_g += block_sum_g;
                sum_gh += block_sum_gh;
            }
        }
        const double scale = (weight * inv_std);
        a_dbias[ch] = (float)(sum_g);
        a_dweight[ch] = (float)(sum_gh);
        for (long long b = 0; b < B; b++) {
            const float e_scale = (float)scale;
            const float* restrict row_gy = a_gy + (b * C + ch) * N;
            float* restrict out_dx = a_dx + (b * C + ch) * N;
            #pragma omp simd
            for (long long i = 0; i < N; i++) {
                const float gy = row_gy[i];
                out_dx[i] = (e_scale * gy);
            }
        }
    }
}
